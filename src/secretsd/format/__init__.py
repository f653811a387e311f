"""The on-disk contract: rules, the writer, and the loaders (load.sh, Python)."""
