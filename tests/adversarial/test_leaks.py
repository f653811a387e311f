"""Canary values through every path: 0 occurrences anywhere but the workspace folder itself.

Not a copy of tests/controlplane/test_server.py's canary test: here the server runs at
`--log-level debug`, the raw database files (incl. -wal/-shm) are read while the server runs and
after a kill -9 (so the WAL is not checkpointed away), internal errors are forced in the real
server, hostile bodies carry the canary as raw invalid UTF-8, and the CLI and load.sh (set -x, every
shell) are covered, with their error paths.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from secretsd.controlplane.app import AppConfig, create_app
from secretsd.controlplane.hosts import LocalHost
from secretsd.store.crypto import new_key, write_key_file

from .helpers import files_under, folder, make_server, record

SHELLS = [["dash"], ["bash"], ["bash", "--posix"], ["busybox", "ash"], ["mksh"], ["posh"], ["yash"],
          ["zsh", "--emulate", "sh"]]


def _hits(blob: bytes | str, canary: str) -> int:
    if isinstance(blob, str):
        blob = blob.encode("utf-8", "surrogateescape")
    return blob.count(canary.encode())


def _data_files(data: Path) -> list[Path]:
    """Every file of the data folder except the workspace folders (which hold values by design)."""
    return [f for f in files_under(data) if "workspaces" not in f.relative_to(data).parts]


def test_canary_debug_logs_raw_db_wal_metrics_audit_internal_errors(tmp_path: Path) -> None:
    canary = "CANARY" + uuid.uuid4().hex
    s = make_server(tmp_path, args=["--log-level", "debug"])
    seen: list[str] = []
    statuses: dict[str, int] = {}
    try:
        with s.client() as c:
            def call(label: str, method: str, url: str, **kw) -> int:
                r = c.request(method, url, **kw)
                seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
                statuses[label] = r.status_code
                return r.status_code

            assert call("create", "POST", "/cp/admin/workspaces", json={"id": "w1", "env": {"SNAP": canary}}) == 201
            assert call("push", "POST", "/cp/admin/workspaces/w1/env",
                        json={"env": {"A": canary, "B": canary + "\r\n", "PEM": f"-----\n{canary}\n-----\n"}}) == 200
            # Validation failures with the canary as a value, in the same batch as good keys.
            call("badname", "POST", "/cp/admin/workspaces/w1/env", json={"env": {"OK": canary, "bad-name": canary}})
            call("reserved", "POST", "/cp/admin/workspaces/w1/env", json={"env": {"LD_PRELOAD": canary}})
            call("oversized", "POST", "/cp/admin/workspaces/w1/env", json={"env": {"BIG": canary * 4000}})
            call("budget", "POST", "/cp/admin/workspaces/w1/env",
                 json={"env": {f"F{i}": canary * 2500 for i in range(15)}})
            call("body413", "POST", "/cp/admin/workspaces/w1/env", json={"env": {"HUGE": canary * 80000}})
            call("nul", "POST", "/cp/admin/workspaces/w1/env", json={"key": "N", "value": canary + "\0"})
            # Raw invalid UTF-8 and a lone surrogate next to the canary in the body.
            call("rawutf8", "POST", "/cp/admin/workspaces/w1/env",
                 content=b'{"env": {"A": "' + canary.encode() + b'\xff\xfe"}}', headers={"content-type": "application/json"})
            call("surrogate", "POST", "/cp/admin/workspaces/w1/env",
                 content=('{"env": {"A": "' + canary + '\\udc80"}}').encode(), headers={"content-type": "application/json"})
            call("truncated", "POST", "/cp/admin/workspaces/w1/env",
                 content=('{"env": {"A": "' + canary).encode(), headers={"content-type": "application/json"})
            call("wrongtype", "POST", "/cp/admin/workspaces/w1/env", json={"env": {"A": {"nested": canary}}})
            call("numkey", "POST", "/cp/admin/workspaces/w1/env", json={"key": "A", "value": 12, "x": canary})
            call("formenc", "POST", "/cp/admin/workspaces/w1/env", content=f"env={canary}",
                 headers={"content-type": "application/x-www-form-urlencoded"})
            call("snapshot_bad", "POST", "/cp/admin/workspaces",
                 json={"id": "w2", "env": {"X": canary + "\0", "1Y": canary}})
            call("rollback_bad", "POST", "/cp/admin/workspaces/w1/env/A/rollback", json={"version": canary})
            call("expected_bad", "POST", "/cp/admin/workspaces/w1/env",
                 json={"env": {"A": canary}, "expected_versions": {"A": canary}})
            call("idem_conflict1", "POST", "/cp/admin/workspaces/w1/env", json={"key": "I", "value": canary},
                 headers={"Idempotency-Key": "leak-1"})
            call("idem_conflict2", "POST", "/cp/admin/workspaces/w1/env", json={"key": "I", "value": canary + "x"},
                 headers={"Idempotency-Key": "leak-1"})
            call("global", "POST", "/cp/admin/env", json={"env": {"G": canary}})
            call("rollback", "POST", "/cp/admin/workspaces/w1/env/A/rollback", json={"version": 1})
            # Force internal errors in the real server: swap the key ring for an unrelated one, so
            # every decryption fails, then hit the routes that decrypt.
            keyfile = s.data / "encryption.key"
            saved = keyfile.read_bytes()
            write_key_file(tmp_path / "other.key", {1: new_key()})
            os.replace(tmp_path / "other.key", keyfile)
            call("internal_rollback", "POST", "/cp/admin/workspaces/w1/env/A/rollback", json={"version": 1})
            call("internal_global", "POST", "/cp/admin/env/G/rollback", json={"version": 1})
            call("internal_push_global", "POST", "/cp/admin/env", json={"env": {"G2": canary}})
            call("internal_create", "POST", "/cp/admin/workspaces", json={"id": "w3"})
            keyfile.write_bytes(saved)
            os.utime(keyfile)
            for url in ("/cp/admin/workspaces/w1/env", "/cp/admin/env", "/cp/admin/workspaces/w1/env/A/versions",
                        "/cp/admin/workspaces", "/cp/admin/workspaces/w1", "/cp/admin/audit?limit=1000",
                        "/metrics", "/openapi.json", "/healthz", "/docs"):
                call("GET " + url, "GET", url)
            call("delete", "DELETE", "/cp/admin/workspaces/w1/env/B")
        # Raw database files while the server runs (WAL not checkpointed).
        running = {str(f.relative_to(s.data)): _hits(f.read_bytes(), canary) for f in _data_files(s.data)}
        s.kill9()
        killed = {str(f.relative_to(s.data)): _hits(f.read_bytes(), canary) for f in _data_files(s.data)}
    finally:
        s.stop()
    assert folder(s.data, "w1")["A"] == canary.encode()  # positive control: the value did get through
    assert any(n.endswith("-wal") for n in running), running  # the WAL was there to be searched
    log = s.log.read_text(errors="replace")
    internal = [k for k, v in statuses.items() if v >= 500 and k.startswith("internal")]
    resp_hits = sum(_hits(x, canary) for x in seen)
    record("leaks_server_debug", requests=len(seen), internal_errors_forced=len(internal),
           statuses={k: v for k, v in statuses.items() if not k.startswith("GET")},
           response_hits=resp_hits, log_hits=_hits(log, canary), log_bytes=len(log),
           db_files_running=running, db_files_after_kill9=killed, traceback_in_log="Traceback" in log)
    assert resp_hits == 0
    assert _hits(log, canary) == 0
    assert sum(running.values()) == 0 and sum(killed.values()) == 0, (running, killed)
    assert "Traceback" not in log
    # Client mistakes are 4xx, never 5xx.
    for label in ("badname", "reserved", "oversized", "budget", "body413", "nul", "rawutf8", "surrogate",
                  "truncated", "wrongtype", "numkey", "formenc", "snapshot_bad", "rollback_bad", "expected_bad",
                  "idem_conflict2"):
        assert 400 <= statuses[label] < 500, (label, statuses[label])


class _ExplodingHost(LocalHost):
    """A host whose write raises an unexpected exception carrying the values (a bug elsewhere)."""

    def apply(self, workspace, set, delete):  # noqa: A002
        raise RuntimeError(f"unexpected: {dict(set)!r}")


def test_internal_error_with_value_in_exception_is_not_echoed(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    canary = "CANARY" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "d"
    app = create_app(AppConfig(data_dir=data, admin_token="t"), host=_ExplodingHost(data))
    with TestClient(app, headers={"Authorization": "Bearer t"}, raise_server_exceptions=False) as c:
        assert c.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
        r = c.post("/cp/admin/workspaces/w/env", json={"env": {"A": canary}})
    app.state.cp.store.close()
    out, err = capfd.readouterr()
    logs = "\n".join(rec.getMessage() + (str(rec.exc_info) if rec.exc_info else "") for rec in caplog.records)
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    assert canary not in r.text and canary not in logs and canary not in out + err


def _cli(args: list[str], *, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "secretsd.cli", *args], input=stdin, capture_output=True, env=e,
                          timeout=60)


def test_cli_every_command_and_error_path(tmp_path: Path) -> None:
    canary = "CANARY" + uuid.uuid4().hex
    d = tmp_path / "secrets.d"
    D = ["--dir", str(d)]
    (tmp_path / "v").write_bytes(canary.encode() + b"\n")
    (tmp_path / "nul").write_bytes(canary.encode() + b"\0")
    (tmp_path / "big").write_bytes(canary.encode() * 5000)
    (tmp_path / "batch.json").write_text(json.dumps({"J1": canary, "J2": canary + "\n"}))
    (tmp_path / "badbatch.json").write_text(json.dumps({"J1": canary, "bad-name": canary, "PATH": canary}))
    (tmp_path / "typed.json").write_text(json.dumps({"J1": [canary]}))
    (tmp_path / "broken.json").write_bytes(b'{"J1": "' + canary.encode() + b'\xff')
    (tmp_path / "nuljson.json").write_text(json.dumps({"J1": canary + "\0"}))
    runs: list[tuple[list[str], bytes]] = [
        (["init", *D], b""),
        (["set", "A", "-", *D], canary.encode()),
        (["set", "F", "--from-file", str(tmp_path / "v"), *D], b""),
        (["set", "--from-json", str(tmp_path / "batch.json"), *D], b""),
        (["set", "--from-json", "-", *D], json.dumps({"S1": canary}).encode()),
        # error paths
        (["set", "bad-name", "-", *D], canary.encode()),
        (["set", "PATH", "-", *D], canary.encode()),
        (["set", "N", "--from-file", str(tmp_path / "nul"), *D], b""),
        (["set", "BIG", "--from-file", str(tmp_path / "big"), *D], b""),
        (["set", "--from-json", str(tmp_path / "badbatch.json"), *D], b""),
        (["set", "--from-json", str(tmp_path / "typed.json"), *D], b""),
        (["set", "--from-json", str(tmp_path / "broken.json"), *D], b""),
        (["set", "--from-json", str(tmp_path / "nuljson.json"), *D], b""),
        (["set", "--from-json", "-", *D], b"[" + canary.encode()),
        (["set", "A", "-", "--expect", "00000000", *D], canary.encode() + b"2"),
        (["set", "A", "--from-file", str(tmp_path / "v"), "--from-json", "-", *D], canary.encode()),
        (["set", "A", *D], canary.encode()),
        (["ls", *D], b""),
        (["ls", "--json", *D], b""),
        (["doctor", *D], b""),
        (["doctor", "--json", *D], b""),
        (["repair", *D], b""),
        (["get", "NOPE", *D], b""),
        (["rm", "NOPE", *D], b""),
        (["exec", *D, "--", "sh", "-c", "exit 3"], b""),
        (["exec", *D, "--", "/nonexistent/cmd"], b""),
        (["rm", "F", *D], b""),
    ]
    hits = []
    codes = []
    for args, stdin in runs:
        p = _cli(args, stdin=stdin)
        codes.append((args[0], p.returncode))
        if _hits(p.stdout + p.stderr, canary):
            hits.append((args, p.returncode, (p.stdout + p.stderr)[:300]))
        assert b"Traceback" not in p.stderr, (args, p.stderr[-500:])
    # hand damage that makes doctor/repair talk: a badly named file and a planted value-bearing dotfile
    (d / "bad name").write_bytes(canary.encode())
    os.chmod(d / "..data" / "A", 0o666)
    for args in (["doctor", *D], ["doctor", "--json", *D], ["repair", *D], ["ls", *D]):
        p = _cli(args)
        if _hits(p.stdout + p.stderr, canary):
            hits.append((args, p.returncode, (p.stdout + p.stderr)[:300]))
    g = _cli(["get", "A", *D])
    assert g.stdout == canary.encode()  # positive control: get is the one command that prints a value
    record("leaks_cli", invocations=len(runs) + 4, hits=len(hits), exit_codes=codes)
    assert not hits, hits


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: "-".join(s))
def test_load_sh_xtrace_on_an_api_written_folder(tmp_path: Path, shell: list[str]) -> None:
    if not shutil.which(shell[0]):
        pytest.skip(f"{shell[0]} not installed")
    canary = "CANARY" + uuid.uuid4().hex
    data = tmp_path / "d"
    app = create_app(AppConfig(data_dir=data, admin_token="t"))
    with TestClient(app, headers={"Authorization": "Bearer t"}) as c:
        c.post("/cp/admin/workspaces", json={"id": "w"})
        r = c.post("/cp/admin/workspaces/w/env", json={"env": {
            "A": canary, "ML": f"{canary}\n{canary}\n", "Q": f"'\"$`\\{canary}", "D": f"-n {canary}"}})
        assert r.status_code == 200
    app.state.cp.store.close()
    sd = data / "workspaces" / "w" / "configs" / "secrets.d"
    # Loader warning paths too: a bad name holding the canary, an oversized file, an unreadable file.
    (sd / "bad-name").write_bytes(canary.encode())
    (sd / "TOOBIG").write_bytes(canary.encode() * 5000)
    script = f"set -x; . '{sd}/load.sh'; set +x; printf '%s' \"$A\" > '{tmp_path}/out'"
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PS4": "+ ", "SECRETSD_DIR": str(sd)}
    p = subprocess.run([*shell, "-c", script], capture_output=True, env=env, timeout=30)
    assert (tmp_path / "out").read_bytes() == canary.encode()  # positive control: it was loaded
    assert _hits(p.stdout + p.stderr, canary) == 0, (p.stdout + p.stderr)[-600:]


def test_core_dumps_are_off_in_the_server(tmp_path: Path) -> None:
    """The server holds every team's values in memory: a core file would carry them to disk."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    # Simulate a host where cores are enabled: raise our soft limit (inherited by the server).
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        s = make_server(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    try:
        limits = Path(f"/proc/{s.proc.pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size")).split()
        status = Path(f"/proc/{s.proc.pid}/status").read_text()
    finally:
        s.stop()
    record("core_dumps", server_core_soft_limit=core[4], parent_soft_limit=hard)
    assert core[4] == "0", f"server runs with core soft limit {core[4]}: a crash would dump values to disk"
