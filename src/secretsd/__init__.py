"""secretsd: workspace secrets that survive restarts.

Packages, one concern each (dependencies point down this list):

- ``secretsd.format``       the on-disk contract, the writer, the loaders (load.sh, Python)
- ``secretsd.store``        durable, encrypted, versioned store (SQLAlchemy)
- ``secretsd.runtime``      workspaces: local sandbox (bubblewrap) and Docker
- ``secretsd.templates``    entrypoint audit and patch
- ``secretsd.controlplane`` the HTTP API; uses store, format and runtime; nothing imports it
- ``secretsd.cli``          the ``secretsd`` command, composing the above
"""

__version__ = "0.1.0"
