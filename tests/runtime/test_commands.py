"""``secretsd workspace env|status|logs`` against a real sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import PROBE, Sandboxes, canary, needs_sandbox

pytestmark = needs_sandbox


def secretsd(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "secretsd.cli", *args], capture_output=True, timeout=60)


def test_workspace_env_status_logs(sandboxes: Sandboxes) -> None:
    value = canary("cli")
    sandboxes.provision("cli", PROBE, env={"MULTI": value.decode(), "RAW": "caf\u00e9"})
    sandboxes.wait_log("cli", "probe ready")
    data = str(sandboxes.data)

    res = secretsd("workspace", "env", "cli", "--data", data, "--json", "--settle", "0")
    assert res.returncode == 0, res.stderr
    env = json.loads(res.stdout)
    assert env["MULTI"].encode() == value and env["RAW"] == "caf\u00e9"

    res = secretsd("workspace", "env", "cli", "--data", data, "--settle", "0")
    assert b"MULTI=" + value + b"\n" in res.stdout  # raw, like `env`

    res = secretsd("workspace", "status", "--data", data, "--json")
    assert json.loads(res.stdout)[0]["state"] == "running"
    res = secretsd("workspace", "logs", "cli", "--data", data)
    assert b"probe ready" in res.stdout and value.split(b"\n")[0] not in res.stdout

    res = secretsd("workspace", "stop", "--all", "--data", data)
    assert res.returncode == 0 and b"stopped cli" in res.stderr
    assert json.loads(secretsd("workspace", "status", "--data", data, "--json").stdout)[0]["state"] != "running"
    assert secretsd("workspace", "stop", "--data", data).returncode == 2  # neither IDs nor --all


def test_workspace_errors_are_messages(sandboxes: Sandboxes, tmp_path: Path) -> None:
    sandboxes.provision("gone", PROBE, env={"PROBE_EXIT": "0"})
    data = str(sandboxes.data)
    for args in (["env", "nope"], ["logs", "nope"]):
        res = secretsd("workspace", *args, "--data", data)
        assert res.returncode == 1 and b"Traceback" not in res.stderr
        assert res.stderr.startswith(b"error: ")
    res = secretsd("workspace", "env", "../x", "--data", data)  # not an id: a usage error
    assert res.returncode == 2 and b"invalid workspace id" in res.stderr and b"Traceback" not in res.stderr
    res = secretsd("workspace", "status", "--data", str(tmp_path / "empty"))
    assert res.returncode != 0 and b"Traceback" not in res.stderr
