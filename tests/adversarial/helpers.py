"""Shared helpers for the adversarial suite: a real `secretsd serve` on loopback, folder and store readers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from secretsd.format.writer import SecretsDir
from secretsd.store import KeyRing, Store
from secretsd.store.engine import default_url
from waiting import wait_healthy

SOAK = bool(os.environ.get("SECRETSD_SOAK"))
soak_only = pytest.mark.skipif(not SOAK, reason="long soak: set SECRETSD_SOAK=1 (make soak)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Server:
    data: Path
    token: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=auth(self.token), timeout=kw.pop("timeout", 60), **kw)

    def start(self, timeout: float = 30) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
        env["SECRETSD_ADMIN_TOKEN"] = self.token
        env.update(self.extra_env)
        argv = [sys.executable, "-m", "secretsd.cli", "serve", "--data", str(self.data), "--port", str(self.port),
                *_runtime_args(self.extra_args), *self.extra_args]
        fh = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
        finally:
            fh.close()
        wait_healthy(self.url, self.proc, self.log, timeout)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def _runtime_args(extra: list[str]) -> list[str]:
    """This suite is about secrets, not sandboxes: no runtime unless a test asks for one."""
    from secretsd.controlplane.commands import serve

    if "--runtime" not in extra and "runtime_name" in {p.name for p in serve.params}:
        return ["--runtime", "none"]
    return []


def make_server(tmp: Path, name: str = "data", *, args: list[str] | None = None,
                env: dict[str, str] | None = None, start: bool = True) -> Server:
    data = tmp / name
    s = Server(data=data, token="adv-" + uuid.uuid4().hex, port=free_port(), log=tmp / f"{name}-server.log",
               extra_args=list(args or []), extra_env=dict(env or {}))
    if start:
        s.start()
    return s


def folder(data: Path, ws: str) -> dict[str, bytes]:
    """What the workspace's loader exports now (the writer's own reader)."""
    base = data / "workspaces"
    path = base / ws / "configs" / "secrets.d"
    if not path.is_dir():
        return {}
    return SecretsDir(path, base=base).read_all()


def open_store(data: Path) -> Store:
    return Store.open(default_url(data), KeyRing.load(data))


def store_values(data: Path, ws: str) -> dict[str, bytes]:
    st = open_store(data)
    try:
        return st.effective(ws)
    finally:
        st.close()


def files_under(root: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            out.append(Path(dirpath) / f)
    return out


def snapshot_tree(root: Path) -> dict[str, tuple[int, int, int, int, bytes | None]]:
    """path -> (mode, uid, gid, size, content for small regular files); links not followed."""
    out: dict[str, tuple[int, int, int, int, bytes | None]] = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            st = p.lstat()
            content = p.read_bytes() if p.is_file() and not p.is_symlink() and st.st_size < 1 << 20 else None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, content)
    return out


def record(test: str, **numbers: Any) -> None:
    """Measured figures for docs/reliability.md: appended as JSON lines to $SECRETSD_ADV_RESULTS when set."""
    import json

    line = json.dumps({"test": test, **numbers}, sort_keys=True, default=str)
    print("\nRESULT " + line)
    out = os.environ.get("SECRETSD_ADV_RESULTS")
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")
