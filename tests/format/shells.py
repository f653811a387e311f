"""The shells load.sh must work in, and a helper to source it in one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from secretsd.format.writer import loader_source

# (id, argv prefix to run a script given with -c). zsh runs in sh emulation.
SHELLS: list[tuple[str, list[str]]] = [
    ("dash", ["dash"]),
    ("bash", ["bash"]),
    ("bash-posix", ["bash", "--posix"]),
    ("busybox-ash", ["busybox", "ash"]),
    ("mksh", ["mksh"]),
    ("posh", ["posh"]),
    ("yash", ["yash"]),
    ("zsh-sh", ["zsh", "--emulate", "sh"]),
]


def available_shells() -> list:
    params = []
    for sid, argv in SHELLS:
        mark = () if shutil.which(argv[0]) else pytest.mark.skip(reason=f"{argv[0]} not installed (make test installs it as root)")
        params.append(pytest.param(argv, id=sid, marks=mark))
    return params


def install_loader(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / "load.sh"
    dest.write_bytes(loader_source())
    return dest


def parse_env0(data: bytes) -> dict[bytes, bytes]:
    out = {}
    for item in data.split(b"\0"):
        if item:
            k, _, v = item.partition(b"=")
            out[k] = v
    return out


def source_in(
    shell: list[str],
    folder: Path,
    *,
    prelude: str = "",
    after: str = "exec /usr/bin/env -0",
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``prelude; . load.sh; after`` in ``shell`` with SECRETSD_DIR=folder."""
    script = f"{prelude}\n. '{folder}/load.sh'\n{after}\n"
    base = {"PATH": "/usr/bin:/bin", "SECRETSD_DIR": str(folder), "LANG": "C.UTF-8"}
    base.update(env or {})
    return subprocess.run([*shell, "-c", script], capture_output=True, env=base, timeout=timeout)


def loaded(shell: list[str], folder: Path, **kw) -> tuple[dict[bytes, bytes], bytes]:
    proc = source_in(shell, folder, **kw)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return parse_env0(proc.stdout), proc.stderr


def uid_is_root() -> bool:
    return os.geteuid() == 0
