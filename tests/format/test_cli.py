"""The core CLI through the real console script: exit codes, byte-exact
input, JSON output, and no value in any message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CANARY = "cli-canary-5d1e0b"
SECRETSD = [str(Path(sys.executable).parent / "secretsd")]


def run(args: list[str], folder: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SECRETSD_DIR": str(folder)}
    return subprocess.run([*SECRETSD, *args], input=stdin, capture_output=True, env=env, timeout=60)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "configs").mkdir()  # like the /configs mount: `set` creates secrets.d, never its parents
    return tmp_path / "configs" / "secrets.d"


def test_help_lists_every_core_command(folder: Path) -> None:
    out = run(["--help"], folder).stdout.decode()
    for cmd in ("init", "set", "rm", "ls", "get", "doctor", "repair", "exec"):
        assert cmd in out


def test_set_stdin_file_and_get_are_byte_exact(folder: Path, tmp_path: Path) -> None:
    value = f"{CANARY}\r\n\n  tail ".encode() + b"\xff"
    assert run(["set", "FROM_STDIN", "-"], folder, stdin=value).returncode == 0
    src = tmp_path / "v.bin"
    src.write_bytes(value)
    assert run(["set", "FROM_FILE", "--from-file", str(src)], folder).returncode == 0
    for key in ("FROM_STDIN", "FROM_FILE"):
        got = run(["get", key], folder)
        assert got.returncode == 0 and got.stdout == value


def test_from_json_batch_all_or_nothing(folder: Path) -> None:
    good = json.dumps({"A": CANARY, "B": "two\n"}).encode()
    assert run(["set", "--from-json", "-"], folder, stdin=good).returncode == 0
    bad = json.dumps({"C": CANARY, "bad-name": "x", "PATH": "y"}).encode()
    proc = run(["set", "--from-json", "-"], folder, stdin=bad)
    assert proc.returncode == 2
    assert b"bad-name" in proc.stderr and b"PATH" in proc.stderr
    assert CANARY.encode() not in proc.stderr + proc.stdout
    listed = json.loads(run(["ls", "--json"], folder).stdout)
    assert [e["name"] for e in listed] == ["A", "B"]
    assert all(e["mode"] == "0600" and len(e["sha256"]) == 8 for e in listed)
    assert CANARY not in json.dumps(listed)
    for junk in (b"not json", b"[1, 2]", b'{"A": 1}'):
        proc = run(["set", "--from-json", "-"], folder, stdin=junk)
        assert proc.returncode == 2 and b"Traceback" not in proc.stderr


def test_exit_codes_and_messages_name_keys_only(folder: Path) -> None:
    assert run(["set", "OK", "-"], folder, stdin=CANARY.encode()).returncode == 0
    cases = [
        (["set", "bad-name", "-"], 2, b"bad-name"),
        (["set", "LD_PRELOAD", "-"], 2, b"LD_PRELOAD"),
        (["set", "NOVALUE"], 2, b"NOVALUE"),
        (["rm", "ABSENT"], 1, b"ABSENT"),
        (["get", "ABSENT"], 1, b"ABSENT"),
        (["set", "OK", "-", "--expect", "deadbeef"], 1, b"conflict"),
        (["nosuchcommand"], 2, b"No such command"),
    ]
    for args, code, needle in cases:
        proc = run(args, folder, stdin=CANARY.encode() + b"x")
        assert proc.returncode == code, (args, proc.stderr)
        assert needle in proc.stderr
        assert CANARY.encode() not in proc.stderr + proc.stdout
        assert b"Traceback" not in proc.stderr


def test_doctor_repair_and_exec(folder: Path) -> None:
    run(["set", "NL", "-"], folder, stdin=b"v\n")
    proc = run(["doctor", "--json"], folder)
    findings = json.loads(proc.stdout)
    assert proc.returncode == 0
    assert any(f["code"] == "TRAILING_NEWLINE" and f["key"] == "NL" for f in findings)
    os.chmod(folder, 0o777)
    assert run(["doctor"], folder).returncode == 1
    assert run(["repair"], folder).returncode == 0
    assert run(["doctor"], folder).returncode == 0
    proc = run(["exec", "--", sys.executable, "-c", "import os,sys; sys.stdout.buffer.write(os.environb[b'NL'])"], folder)
    assert proc.stdout == b"v\n"
    assert run(["exec", "--", "/no/such/program"], folder).returncode == 127


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    given = tmp_path / "nope" / "secrets.d"
    proc = run(["ls"], given)
    assert proc.returncode == 1 and b"no such" in proc.stderr.lower() and b"Traceback" not in proc.stderr
    assert f"no such folder: {given} ".encode() in proc.stderr  # the folder given, not its parent
