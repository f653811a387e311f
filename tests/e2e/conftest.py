"""End to end: a real ``secretsd serve`` (uvicorn on loopback, subprocess)
with the local sandbox runtime, driven through its HTTP API. No mocks.

One control plane for the session (each test uses its own workspaces); its
templates folder is a copy of ``examples/templates`` plus test-only
templates (``probe``, ``trace-first``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from secretsd.acceptance.client import Client
from secretsd.runtime.base import WorkspaceError
from secretsd.runtime.sandbox import SandboxRuntime
from waiting import wait_healthy, wait_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TEST_TEMPLATES = REPO / "tests" / "runtime" / "templates"
LOAD_SH = REPO / "src" / "secretsd" / "format" / "sh" / "load.sh"


def _unavailable() -> str | None:
    try:
        SandboxRuntime.check()
    except WorkspaceError as exc:
        return str(exc)
    return None


needs_sandbox = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")


def canary(tag: str = "") -> str:
    """Random, multi-line, non-ASCII, with a trailing newline."""
    return f"canary-{tag}-{secrets.token_hex(8)}\nsecond line \u00e9 {secrets.token_hex(4)}\n"


def canary_parts(value: str) -> list[str]:
    """The random lines of a canary: what must never appear in a log or response."""
    return value.splitlines()  # each line carries a random part


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def templates_folder(dest: Path) -> Path:
    """examples/templates + the test-only templates, and images.json next to them."""
    tdir = dest / "templates"
    shutil.copytree(EXAMPLES / "templates", tdir)
    for name in ("probe", "trace-first"):
        shutil.copytree(TEST_TEMPLATES / name, tdir / name)
    (dest / "images.json").write_text(json.dumps({"secretsd-examples/agent-runtime": str(EXAMPLES / "agent")}))
    return tdir


@dataclass
class Server:
    url: str
    data: Path
    log: Path
    token: str
    proc: subprocess.Popen[bytes]
    canaries: list[str] = field(default_factory=list)

    def client(self) -> Client:
        return Client(self.url, self.token)

    @property
    def rt(self) -> SandboxRuntime:
        return SandboxRuntime(self.data)

    def env(self, ws: str) -> dict[str, bytes]:
        return self.rt.main_environ(ws, settle=10)

    def configs(self, ws: str) -> Path:
        return self.data / "workspaces" / ws / "configs"

    def console(self, ws: str) -> str:
        return self.rt.log_path(ws).read_text(errors="replace")

    def wait_console(self, ws: str, text: str, count: int = 1, timeout: float = 15.0) -> str:
        return wait_text(lambda: self.console(ws), text, count, timeout, ws)

    def wait_ready(self, ws: str, text: str = "agent-runtime: ready", timeout: float = 30.0) -> str:
        """The console since the workspace's last (re)start, once it shows ``text``. (A start
        interrupted by a restart may never get as far: count on the last one only.)"""
        deadline = time.monotonic() + timeout
        while True:
            last = self.console(ws).rsplit("--- secretsd sandbox: ", 1)[-1]
            if text in last:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"{ws}: {text!r} not in its log since the last start:\n{last[-2000:]}")
            time.sleep(0.05)

    def canary(self, tag: str = "") -> str:
        v = canary(tag)
        self.canaries.append(v)
        return v

    def assert_no_leak(self, *texts: str) -> None:
        """No canary of this session in the server's log, any workspace console, or ``texts``."""
        logs = [self.log.read_text(errors="replace"), *texts]
        root = self.data / "runtime" / "sandbox"
        if root.is_dir():
            logs += [p.read_text(errors="replace") for p in root.glob("*/console.log")]
        for v in self.canaries:
            for part in canary_parts(v):
                for text in logs:
                    assert part not in text, "a pushed value leaked into a log or an answer"


def start_server(data: Path, templates: Path | None, *args: str, port: int | None = None) -> Server:
    port = port or free_port()
    data.mkdir(parents=True, exist_ok=True)
    log = data.parent / f"{data.name}-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    argv = [sys.executable, "-m", "secretsd.cli", "serve", "--data", str(data), "--port", str(port), *args]
    if templates is not None:
        argv += ["--templates", str(templates)]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log)
    return Server(url, data, log, (data / "admin.token").read_text().strip(), proc)


def stop_server(s: Server) -> int:
    """Ctrl-C, as a user would; the exit status."""
    s.proc.send_signal(signal.SIGINT)
    try:
        return s.proc.wait(15)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        return s.proc.wait()


def remove_sandboxes(data: Path) -> None:
    rt = SandboxRuntime(data)
    for ws in rt.list():
        try:
            rt.remove(ws)
        except WorkspaceError:
            pass


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def templates(e2e_root: Path) -> Path:
    return templates_folder(e2e_root)


@pytest.fixture(scope="session")
def server(e2e_root: Path, templates: Path) -> Iterator[Server]:
    if _unavailable():
        pytest.skip(_unavailable() or "")
    s = start_server(e2e_root / "data", templates)
    try:
        yield s
    finally:
        stop_server(s)
        remove_sandboxes(s.data)


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with server.client() as c:
        yield c
