"""Workspace runtimes: the interface (``base``), the local bubblewrap
sandbox (the embedded default) and Docker. The control plane picks one with
``make_runtime``; nothing here imports the control plane or the store."""

from __future__ import annotations

import json
from pathlib import Path

from secretsd.runtime.base import InvalidWorkspace, Runtime, RuntimeUnavailable


def load_images(path: str | Path) -> dict[str, Path]:
    """Local base images from a JSON file (``examples/images.json``):
    ``{"name": "folder relative to the file"}``; keys starting with ``//``
    are comments."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidWorkspace(f"cannot read local images from {path}: {exc}") from None
    return {k: (path.parent / v).resolve() for k, v in raw.items() if not k.startswith("//")}


def make_runtime(name: str, data_dir: str | Path, images: dict[str, Path] | None = None) -> Runtime:
    """``sandbox`` (checked usable now) or ``docker`` (checked on first use)."""
    if name == "sandbox":
        from secretsd.runtime.sandbox import SandboxRuntime

        SandboxRuntime.check()
        return SandboxRuntime(data_dir, images=images)
    if name == "docker":
        from secretsd.runtime.docker import DockerRuntime

        return DockerRuntime(images=images)
    raise RuntimeUnavailable(name, "unknown runtime (use sandbox or docker)")
