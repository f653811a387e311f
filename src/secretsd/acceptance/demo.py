"""``secretsd demo``: the whole scenario, end to end, on the example templates.

A throwaway data folder and a control plane of its own on a free loopback
port (real uvicorn, real sandboxes). Per template: provision a workspace
whose create-time snapshot sets ``DEMO_TOKEN``; push a random canary for
``DEMO_TOKEN`` over HTTP; then check the agent's main process after a
``recreate``, after a ``restart``, and after the workspace's ``/configs``
folder was wiped on the host (the next restart heals it from the store).

The expectation comes from the template audit: a template whose guard the
audit finds must pass every step; one without (``no-guard``) must fail —
that failure is the point of the example. Exit 0 when every result matches
its expectation.

This module is a composition root: it builds the control plane in-process.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secretsd.acceptance.client import ApiFailure, Client
from secretsd.acceptance.verify import EnvReader, look, new_canary, sha8

STEPS = ("recreate", "restart", "wiped")
CREATE_TIME = "create-time value"  # in the snapshot; the pushed canary must win over it


@dataclass
class Row:
    template: str
    workspace: str
    guard: str  # what the audit says
    expected_pass: bool
    pushed: str = "-"
    after: dict[str, str] = field(default_factory=dict)  # step -> byte-exact / missing / ...
    passed: bool = False
    as_expected: bool = False
    error: str | None = None
    seconds: float = 0.0

    @property
    def result(self) -> str:
        if self.passed and self.as_expected:
            return "pass"
        if self.as_expected:
            return "fails, as expected (no guard)"
        if self.passed:
            return "UNEXPECTED PASS"
        return "FAIL"


class DemoServer:
    """The control plane in this process, on 127.0.0.1:<free port>."""

    def __init__(self, data: Path, templates: Path) -> None:
        import uvicorn

        from secretsd.controlplane.app import AppConfig, create_app
        from secretsd.runtime.catalog import select_runtime

        sel = select_runtime("sandbox", data, templates)
        if sel.runtime is None:
            raise RuntimeError(sel.unavailable or sel.message)
        self.runtime = sel.runtime
        self.token = secrets.token_urlsafe(32)
        self.app = create_app(AppConfig(data_dir=data, admin_token=self.token), runtime=self.runtime)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="secretsd-demo-server", daemon=True)

    def __enter__(self) -> DemoServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo control plane did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()
        self.app.state.cp.store.close()


def guard_column(template_dir: Path) -> tuple[str, bool]:
    from secretsd.templates.audit import audit_path
    from secretsd.templates.findings import Severity

    res = audit_path(template_dir, name=template_dir.name)
    if res.compliant:
        return "yes", True
    errs = [f"{f.code} {f.file}:{f.line}" for f in res.findings if f.severity is Severity.ERROR]
    return "no (" + ", ".join(errs[:2]) + ")", False


def run_one(client: Client, reader: EnvReader, data: Path, template: Path, ws: str) -> Row:
    guard, compliant = guard_column(template)
    row = Row(template=template.name, workspace=ws, guard=guard, expected_pass=compliant)
    t0 = time.monotonic()
    name = "DEMO_TOKEN"
    _, value = new_canary()
    want = value.encode()
    try:
        client.create(ws, template=template.name, env={name: CREATE_TIME})
        client.push(ws, {name: value})
        row.pushed = f"yes, sha8 {sha8(want)}"
        client.restart(ws, "recreate")
        row.after["recreate"] = look(reader, ws, name, want)
        client.restart(ws, "restart")
        row.after["restart"] = look(reader, ws, name, want)
        configs = data / "workspaces" / ws / "configs"
        shutil.rmtree(configs)  # as a platform that deletes the volume on teardown
        client.restart(ws, "recreate")  # re-materialises from the store first
        row.after["wiped"] = look(reader, ws, name, want)
    except ApiFailure as exc:
        row.error = str(exc)
    row.passed = row.error is None and all(row.after.get(s) == "byte-exact" for s in STEPS)
    row.as_expected = row.passed == row.expected_pass
    row.seconds = round(time.monotonic() - t0, 1)
    return row


def run_demo(templates: Path, *, keep: Path | None = None) -> list[Row]:
    from secretsd.acceptance.verify import sandbox_reader

    data = Path(tempfile.mkdtemp(prefix="secretsd-demo-")) if keep is None else keep
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    try:
        with DemoServer(data, templates) as srv, Client(srv.url, srv.token) as client:
            names = srv.runtime.catalog.names()
            reader = sandbox_reader(data)
            with ThreadPoolExecutor(max_workers=4) as pool:
                futs = [pool.submit(run_one, client, reader, data, templates / n, f"demo-{n}") for n in names]
                rows = [f.result() for f in futs]
            for n in names:
                try:
                    client.delete(f"demo-{n}")  # stops the sandbox too
                except ApiFailure:
                    pass
    finally:
        if keep is None:
            shutil.rmtree(data, ignore_errors=True)
    return rows


def render(rows: list[Row], console: Any) -> None:
    from rich.table import Table

    t = Table(title="secretsd demo: a pushed secret in the agent's main process")
    for col in ("template", "guard found (audit)", "pushed", "after recreate", "after restart",
                "after /configs wiped", "result"):
        t.add_column(col, overflow="fold")
    for r in rows:
        cells = [_cell(r.after.get(s)) for s in STEPS]
        style = "green" if r.as_expected else "red"
        t.add_row(r.template, r.guard, r.pushed, *cells, f"[{style}]{r.result}[/]")
    console.print(t)
    for r in rows:
        if r.error:
            console.print(f"[red]{r.workspace}: {r.error}[/]")


def _cell(v: str | None) -> str:
    if v is None:
        return "-"
    if v == "byte-exact":
        return "[green]present, byte-exact[/]"
    if v == f"different (sha8 {sha8(CREATE_TIME.encode())})":
        return "[red]stale: the create-time value[/]"
    return f"[red]{v}[/]"


def to_dict(rows: list[Row]) -> dict[str, Any]:
    return {"ok": all(r.as_expected for r in rows),
            "results": [{**asdict(r), "result": r.result} for r in rows]}
