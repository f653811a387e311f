"""Workspace ids on the command line are validated before anything happens:
'..', '../x', 'a/b' or '' is a usage error (exit 2), never a request to
another route (an id of '..' made verify-restart push its canary as a
global secret) nor a path under --data."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SECRETSD = [str(Path(sys.executable).parent / "secretsd")]
BAD_IDS = ["..", "../x", "a/b", "", ".hidden", "-x", "a" * 129, "ws\n"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    return subprocess.run([*SECRETSD, *args], capture_output=True, text=True, env=env, timeout=60)


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def _any(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        body = b'{"workspaces": [], "secrets": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = do_PUT = _any

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("H", (_Recorder,), {"seen": seen})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "var"
    (d / "runtime" / "sandbox").mkdir(parents=True)
    (d / "admin.token").write_text("t" * 32)
    return d


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_verify_restart_refuses_a_bad_workspace_id_without_any_request(
    bad: str, data: Path, recorder: tuple[str, list[str]]
) -> None:
    url, seen = recorder
    res = run("verify-restart", "--url", url, "--workspace", bad, "--data", str(data))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "workspace" in res.stderr and "Traceback" not in res.stderr
    assert seen == []  # nothing pushed, in particular not to /cp/admin/env


def test_verify_restart_still_talks_to_the_server_for_a_good_id(data: Path, recorder: tuple[str, list[str]]) -> None:
    # Positive control: the same setup with a valid id does reach the server.
    if os.geteuid() != 0:
        pytest.skip("verify-restart needs root before it sends anything")
    url, seen = recorder
    res = run("verify-restart", "--url", url, "--workspace", "ws1", "--data", str(data), "--json")
    assert "Traceback" not in res.stderr
    assert any(s.startswith("POST /cp/admin/workspaces/ws1/env") for s in seen), seen


def test_client_refuses_a_path_changing_id(recorder: tuple[str, list[str]]) -> None:
    from secretsd.acceptance.client import ApiFailure, Client

    url, seen = recorder
    with Client(url, "t" * 32) as c:
        for bad in ("..", "../x", "a/b", ""):
            with pytest.raises(ApiFailure, match="invalid workspace id"):
                c.push(bad, {"A": "x"})
        c.push("ok-1", {"A": "x"})
    assert seen == ["POST /cp/admin/workspaces/ok-1/env"]


@pytest.mark.parametrize("with_sandbox", [True, False], ids=["sandbox-dir", "no-sandbox-dir"])
@pytest.mark.parametrize("cmd", [["env"], ["logs"], ["status"], ["stop"]], ids=lambda c: c[0])
@pytest.mark.parametrize("bad", ["..", "../x", "a/b", ""], ids=repr)
def test_workspace_commands_refuse_bad_ids_as_usage_errors(
    cmd: list[str], bad: str, with_sandbox: bool, data: Path, tmp_path: Path
) -> None:
    where = data if with_sandbox else tmp_path / "empty"
    res = run("workspace", *cmd, bad, "--data", str(where))
    assert res.returncode == 2, (cmd, bad, res.stdout, res.stderr)
    assert "invalid workspace id" in res.stderr and "Traceback" not in res.stderr


def test_workspace_status_of_a_good_absent_id_is_still_fine(data: Path) -> None:
    res = run("workspace", "status", "ws1", "--data", str(data), "--json")
    assert res.returncode == 0 and '"absent"' in res.stdout
