"""The RFC's acceptance test against a running control plane.

For one workspace: push a random canary (multi-line, trailing newline)
through the API, restart it through the API, read the environment of the
workspace's main process on the host (the runtime's ``main_environ``, host
root only), compare byte for byte, then delete the canary again. Reports
carry the canary's name and the first 8 hex digits of its sha256, never the
value.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from secretsd.acceptance.client import ApiFailure, Client

#: Reads a workspace's main-process environment on the host.
EnvReader = Callable[[str], dict[str, bytes]]


def sha8(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:8]


def new_canary() -> tuple[str, str]:
    """A fresh (name, value): the value is multi-line, non-ASCII, with a trailing newline."""
    name = f"VERIFY_CANARY_{secrets.token_hex(4).upper()}"
    value = f"canary {secrets.token_urlsafe(18)}\nline two \u00e9 {secrets.token_hex(6)}\n"
    return name, value


def sandbox_reader(data: Path, settle: float = 10.0) -> EnvReader:
    from secretsd.runtime.sandbox import SandboxRuntime

    rt = SandboxRuntime(data)
    return lambda ws: rt.main_environ(ws, settle=settle)


def look(reader: EnvReader, ws: str, name: str, want: bytes) -> str:
    """``byte-exact``, ``missing``, ``different (sha8 X)`` or ``unreadable: why``."""
    from secretsd.runtime.base import WorkspaceError

    try:
        env = reader(ws)
    except WorkspaceError as exc:
        return f"unreadable: {exc}"
    if name not in env:
        return "missing"
    got = env[name]
    return "byte-exact" if got == want else f"different (sha8 {sha8(got)})"


@dataclass
class Check:
    workspace: str
    mode: str
    key: str
    sha8: str
    pushed: bool = False
    restarted: bool = False
    found: str = "-"
    removed: bool = False
    ok: bool = False
    error: str | None = None
    seconds: float = 0.0


def verify_workspace(client: Client, reader: EnvReader, ws: str, mode: str = "recreate") -> Check:
    name, value = new_canary()
    want = value.encode()
    check = Check(workspace=ws, mode=mode, key=name, sha8=sha8(want))
    t0 = time.monotonic()
    try:
        client.push(ws, {name: value})
        check.pushed = True
        client.restart(ws, mode)
        check.restarted = True
        check.found = look(reader, ws, name, want)
        check.ok = check.found == "byte-exact"
        if not check.ok:
            check.error = f"after {mode}, the canary is {check.found} in the main process"
    except ApiFailure as exc:
        step = "restart" if check.pushed else "push"
        check.error = f"{step} failed: {exc}"
    finally:
        if check.pushed:
            try:
                client.delete_key(ws, name)
                check.removed = True
            except ApiFailure as exc:
                check.ok = False
                check.error = (check.error + "; " if check.error else "") + f"canary not removed: {exc}"
        check.seconds = round(time.monotonic() - t0, 2)
    return check


def to_json(checks: list[Check], skipped: list[str] | None = None) -> str:
    return json.dumps({"ok": bool(checks) and all(c.ok for c in checks), "passed": sum(c.ok for c in checks),
                       "total": len(checks), "results": [asdict(c) for c in checks],
                       "skipped": skipped or []}, indent=2)


def table(checks: list[Check], title: str) -> object:
    from rich.table import Table

    t = Table(title=title)
    for col in ("workspace", "mode", "canary", "sha8", "pushed", "restarted", "in main process", "removed", "result"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.workspace, c.mode, c.key, c.sha8, _yn(c.pushed), _yn(c.restarted), c.found, _yn(c.removed),
                  "[green]pass[/]" if c.ok else "[red]FAIL[/]")
    return t


def _yn(b: bool) -> str:
    return "yes" if b else "no"
