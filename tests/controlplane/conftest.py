"""Control-plane fixtures: the real app (in-process ASGI client or uvicorn on loopback), real databases."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from secretsd.controlplane.app import AppConfig, create_app
from secretsd.controlplane.commands import serve
from secretsd.format.writer import SecretsDir
from waiting import wait_healthy

TOKEN = "test-token-" + uuid.uuid4().hex


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def folder(data: Path, ws: str) -> dict[str, bytes]:
    """What the workspace's loader would export now."""
    base = data / "workspaces"
    path = base / ws / "configs" / "secrets.d"
    if not path.is_dir():
        return {}
    return SecretsDir(path, base=base).read_all()


@dataclass
class RecordingRuntime:
    """A runtime that records calls and what secrets.d held at each call (to check materialise-first)."""

    data: Path
    calls: list[tuple[str, Any]] = field(default_factory=list)
    seen: list[dict[str, bytes]] = field(default_factory=list)
    fail: Exception | None = None
    stopped: set[str] = field(default_factory=set)  # status() says "stopped" for these

    def _rec(self, name: str, arg: Any, ws: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.append((name, arg))
        self.seen.append(folder(self.data, ws))

    def provision(self, spec: Any) -> None:
        self._rec("provision", spec, spec.id)

    def start(self, id: str) -> None:
        self._rec("start", id, id)

    def stop(self, id: str) -> None:
        self._rec("stop", id, id)

    def restart(self, id: str, mode: str) -> None:
        self._rec("restart", (id, mode), id)

    def status(self, id: str) -> Any:
        from secretsd.runtime.base import WorkspaceStatus

        return WorkspaceStatus(id=id, state="stopped" if id in self.stopped else "running")

    def remove(self, id: str) -> None:
        self.calls.append(("remove", id))


@dataclass
class Env:
    data: Path
    app: FastAPI
    client: TestClient

    def create(self, ws: str, **body: Any) -> None:
        r = self.client.post("/cp/admin/workspaces", json={"id": ws, **body})
        assert r.status_code == 201, r.text

    def push(self, ws: str | None, env: dict[str, str], **kw: Any) -> httpx.Response:
        url = f"/cp/admin/workspaces/{ws}/env" if ws else "/cp/admin/env"
        return self.client.post(url, json={"env": env, **kw.pop("body", {})}, **kw)

    def folder(self, ws: str) -> dict[str, bytes]:
        return folder(self.data, ws)


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[..., Env]]:
    clients: list[TestClient] = []

    def make(*, db_url: str | None = None, runtime: Any = None, host: Any = None, max_body: int | None = None,
             data: Path | None = None) -> Env:
        data = data or tmp_path / f"data{len(clients)}"
        cfg = AppConfig(data_dir=data, db_url=db_url, admin_token=TOKEN)
        if max_body:
            cfg.max_body = max_body
        app = create_app(cfg, runtime=runtime, host=host)
        client = TestClient(app, headers=auth())
        clients.append(client)
        return Env(data, app, client)

    yield make
    for c in clients:
        c.close()
        c.app.state.cp.store.close()  # type: ignore[attr-defined]


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    e = make_env()
    e.create("w1")
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    data: Path
    log: Path
    token: str
    proc: subprocess.Popen[bytes]

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=auth(self.token), timeout=60, **kw)


def start_server(data: Path, *, db_url: str | None = None, extra_env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> Server:
    port = free_port()
    log = data.parent / f"{data.name}-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    env.update(extra_env or {})
    argv = [sys.executable, "-m", "secretsd.cli", "serve", "--data", str(data), "--port", str(port)]
    if db_url:
        argv += ["--db", db_url]
    if "runtime_name" in {p.name for p in serve.params}:
        argv += ["--runtime", "none"]  # these tests are about secrets, not sandboxes
    argv += args or []
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log)
    token = env.get("SECRETSD_ADMIN_TOKEN") or (data / "admin.token").read_text().strip()
    return Server(url, data, log, token, proc)


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path / "data")
    yield s
    stop_server(s)
