"""The commands a user runs: ``serve --demo`` (``make run``), ``verify-restart``
and ``demo`` (``make demo``), and serve without a runtime."""

from __future__ import annotations

import json
import os
import re
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from secretsd.acceptance.client import ApiFailure, Client
from access import reachable_by_others

from .conftest import REPO, Server, free_port, needs_sandbox, remove_sandboxes, start_server, stop_server

SECRETSD = [sys.executable, "-m", "secretsd.cli"]
#: The random first line of a verify/demo canary (acceptance.verify.new_canary).
VALUE_RE = re.compile(r"canary [A-Za-z0-9_-]{24}")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    e.update(env or {})
    return subprocess.run([*SECRETSD, *args], capture_output=True, text=True, timeout=timeout, env=e, cwd=REPO)


def _wait_log(path: Path, text: str, timeout: float = 60, count: int = 1) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = path.read_text(errors="replace")
        if log.count(text) >= count:
            return log
        assert time.monotonic() < deadline, f"{text!r} not in:\n{log[-3000:]}"
        time.sleep(0.1)


@needs_sandbox
def test_verify_restart_passes_on_a_guarded_workspace_and_fails_without_guard(server: Server, client: Client) -> None:
    client.create("e2e-verify", template="sh-reexec")
    client.create("e2e-verify-ng", template="no-guard")
    common = ["--url", server.url, "--token-file", str(server.data / "admin.token"), "--data", str(server.data)]
    ok = run("verify-restart", "--workspace", "e2e-verify", *common)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1/1 workspaces passed" in ok.stdout and "byte-exact" in ok.stdout
    ok2 = run("verify-restart", "--workspace", "e2e-verify", "--mode", "restart", "--json", *common)
    assert ok2.returncode == 0, ok2.stdout + ok2.stderr
    report = json.loads(ok2.stdout)
    assert report["ok"] and report["results"][0]["found"] == "byte-exact" and report["results"][0]["removed"]
    bad = run("verify-restart", "--workspace", "e2e-verify-ng", "--json", *common)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    res = json.loads(bad.stdout)["results"][0]
    assert res["pushed"] and res["restarted"] and not res["ok"] and res["removed"]
    assert res["found"].startswith(("missing", "different"))
    # --all checks what runs; a secrets-only workspace (no template) is listed as skipped, not failed.
    client.create("e2e-verify-so")
    every = run("verify-restart", "--all", "--json", *common)
    report = json.loads(every.stdout)
    checked = {r["workspace"]: r for r in report["results"]}
    assert "e2e-verify-so" in report["skipped"] and "e2e-verify-so" not in checked
    assert checked["e2e-verify"]["ok"] and not checked["e2e-verify-ng"]["ok"] and every.returncode == 1
    # The canaries are gone again, and no value was printed or logged.
    for ws in ("e2e-verify", "e2e-verify-ng", "e2e-verify-so"):
        assert not [s for s in client.secrets(ws) if s["name"].startswith("VERIFY_CANARY_")]
    for out in (ok.stdout, ok2.stdout, bad.stdout, every.stdout, ok.stderr, server.log.read_text()):
        assert not VALUE_RE.search(out) and "line two" not in out
    # Usage errors: clear, exit 2, no traceback.
    u = run("verify-restart", "--url", server.url)
    assert u.returncode == 2 and "Traceback" not in u.stderr
    nf = run("verify-restart", "--workspace", "nope", *common)
    assert nf.returncode == 1 and "404" in nf.stdout and "Traceback" not in nf.stderr


@needs_sandbox
def test_serve_demo_provisions_examples_idempotently_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "var"
    port = free_port()
    servers: list[Server] = []
    try:
        s = start_server(data, None, "--demo", port=port)
        servers.append(s)
        log = _wait_log(s.log, "Try it")
        assert s.token not in log  # where the token is, never the token
        assert f"$(cat {data}/admin.token)" in log
        assert "workspace env sh-reexec" in log and "/restart" in log
        with s.client() as c:
            ids = sorted(w["id"] for w in c.workspaces())
            assert ids == ["bash-strict", "no-guard", "program-entrypoint", "sh-reexec"]
            assert all(c.workspace(i)["state"] == "running" for i in ids)
        # The acceptance test over every example: only no-guard fails.
        v = run("verify-restart", "--url", s.url, "--all", "--json", "--data", str(data))
        assert v.returncode == 1, v.stdout + v.stderr
        failed = [r["workspace"] for r in json.loads(v.stdout)["results"] if not r["ok"]]
        assert failed == ["no-guard"]
        assert stop_server(s) == 0  # Ctrl-C: a clean stop
        assert "Traceback" not in s.log.read_text()
        # The workspaces outlive the control plane; a second `make run` reuses them.
        seen = len(s.log.read_text(errors="replace"))  # the log file is appended to
        s2 = start_server(data, None, "--demo", port=port)
        servers.append(s2)
        log2 = _wait_log(s2.log, "Try it", count=2)[seen:]
        assert log2.count("running (reused)") == 4
        assert stop_server(s2) == 0
    finally:
        for srv in servers:  # first: a live server would provision them again
            if srv.proc.poll() is None:
                stop_server(srv)
        remove_sandboxes(data)


@needs_sandbox
def test_demo_command_exits_0_with_no_guard_failing_as_expected() -> None:
    r = run("demo", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    by = {x["template"]: x for x in report["results"]}
    assert set(by) == {"bash-strict", "no-guard", "program-entrypoint", "sh-reexec"}
    assert by["no-guard"]["result"].startswith("fails, as expected") and not by["no-guard"]["passed"]
    assert by["no-guard"]["guard"].startswith("no")
    for t in ("bash-strict", "program-entrypoint", "sh-reexec"):
        assert by[t]["result"] == "pass" and by[t]["guard"] == "yes"
        assert by[t]["after"] == {"recreate": "byte-exact", "restart": "byte-exact", "wiped": "byte-exact"}
    assert not VALUE_RE.search(r.stdout + r.stderr) and "line two" not in r.stdout + r.stderr


def test_serve_without_runtime_answers_501_with_the_reason(tmp_path: Path) -> None:
    s = start_server(tmp_path / "data", None, "--runtime", "none")
    try:
        with s.client() as c:
            c.create("w")
            try:
                c.restart("w")
                raise AssertionError("restart without a runtime")
            except ApiFailure as exc:
                assert exc.status == 501 and "runtime" in exc.message
        assert "workspace runtime: none" in s.log.read_text()
    finally:
        stop_server(s)


def test_serve_falls_back_to_none_when_the_sandbox_cannot_run(tmp_path: Path) -> None:
    """Not root (here: uid 65534 via setpriv when we are root): say why, serve secrets, 501 on restart."""
    if os.geteuid() != 0:
        s = start_server(tmp_path / "data", None)
    else:
        if not reachable_by_others(sys.executable) or not reachable_by_others(Path(__file__)):
            pytest.skip("this checkout or its virtualenv is inside a folder other users cannot enter "
                        "(e.g. a 0700 mktemp dir): uid 65534 cannot run the server from it")
        base = Path(tempfile.mkdtemp(prefix="secretsd-e2e-nobody-"))  # pytest's tmp is root-only
        os.chmod(base, 0o755)
        data = base / "data"
        data.mkdir()
        os.chown(data, 65534, 65534)
        port = free_port()
        log = base / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
        with open(log, "wb") as fh:
            proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *SECRETSD,
                                     "serve", "--data", str(data), "--port", str(port)],
                                    stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        s = Server(url, data, log, (data / "admin.token").read_text().strip(), proc)
    try:
        text = s.log.read_text()
        assert "workspace runtime: none -- sandbox runtime unavailable: must run as root" in text
        with s.client() as c:
            c.create("w")
            try:
                c.restart("w")
                raise AssertionError("restart without a runtime")
            except ApiFailure as exc:
                assert exc.status == 501 and "must run as root" in exc.message
    finally:
        stop_server(s)
        if os.geteuid() == 0:
            shutil.rmtree(s.data.parent, ignore_errors=True)
