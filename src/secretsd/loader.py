"""Public alias: ``from secretsd.loader import load_into``."""

from secretsd.format.loader import LoadResult, load_into, read_dir

__all__ = ["LoadResult", "load_into", "read_dir"]
