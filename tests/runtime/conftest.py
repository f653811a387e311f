"""Real sandboxes for the runtime tests: no mocks, bwrap and gosu must exist."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from secretsd.runtime import load_images
from secretsd.runtime.base import WorkspaceError, WorkspaceSpec
from secretsd.runtime.sandbox import SandboxRuntime
from waiting import wait_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TEMPLATES = EXAMPLES / "templates"
PROBE = Path(__file__).parent / "templates" / "probe"
LOAD_SH = REPO / "src" / "secretsd" / "format" / "sh" / "load.sh"
IMAGES = load_images(EXAMPLES / "images.json")


def _unavailable() -> str | None:
    try:
        SandboxRuntime.check()
    except WorkspaceError as exc:
        return str(exc)
    return None


needs_sandbox = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")
needs_loader = pytest.mark.skipif(not LOAD_SH.is_file(), reason=f"{LOAD_SH} not written yet")


def canary(tag: str = "") -> bytes:
    """A random multi-line value with a trailing newline: byte-exactness and leak checks."""
    return f"canary-{tag}-{secrets.token_hex(8)}\nsecond line {secrets.token_hex(4)}\n".encode()


def write_secrets(configs: Path, values: Mapping[str, bytes], loader: bool = True) -> None:
    """secrets.d by hand, per the contract: one 0600 file per variable,
    folder 0700, owned 1000:1000, plus the loader."""
    d = configs / "secrets.d"
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    for name, value in values.items():
        fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        os.chown(d / name, 1000, 1000)
    if loader:
        shutil.copyfile(LOAD_SH, d / "load.sh")
        os.chmod(d / "load.sh", 0o644)
    os.chmod(d, 0o700)
    os.chown(d, 1000, 1000)


class Sandboxes:
    """A runtime in a temporary DATA folder, removing what the test made."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.rt = SandboxRuntime(data, images=IMAGES, stop_timeout=3.0)

    def configs(self, id: str) -> Path:
        return self.data / "workspaces" / id / "configs"

    def provision(self, id: str, template: str | Path, env: Mapping[str, str] | None = None,
                  secrets: Mapping[str, bytes] | None = None) -> None:
        path = template if isinstance(template, Path) else TEMPLATES / template
        if secrets is not None:
            write_secrets(self.configs(id), secrets)
        self.rt.provision(WorkspaceSpec(id=id, template=str(path), env=dict(env or {}), configs_dir=self.configs(id)))

    def log(self, id: str) -> str:
        return self.rt.log_path(id).read_text(errors="replace")

    def wait_log(self, id: str, text: str, count: int = 1, timeout: float = 10.0) -> str:
        return wait_text(lambda: self.log(id), text, count, timeout, id)

    def cleanup(self) -> None:
        for id in self.rt.list():
            self.rt.remove(id)


@pytest.fixture
def sandboxes(tmp_path: Path) -> Iterator[Sandboxes]:
    sb = Sandboxes(tmp_path / "data")
    try:
        yield sb
    finally:
        sb.cleanup()
