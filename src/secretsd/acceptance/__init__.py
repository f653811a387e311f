"""End-to-end acceptance against a running control plane: its HTTP client,
example workspaces for ``serve --demo``, ``secretsd verify-restart`` and
``secretsd demo``.

Layering: ``client``, ``examples`` and ``verify`` talk HTTP and read the
runtime's state on the host; only ``demo`` (a composition root that starts
its own server) imports the control plane.
"""
