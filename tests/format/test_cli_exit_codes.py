"""Validation errors are exit 2, not a runtime failure (exit 1): an --expect
that is not hex is not a conflict, and a name that can never be a secret is
not "no such secret". exec's 126/127 are documented. Real console script,
real folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

SECRETSD = [str(Path(sys.executable).parent / "secretsd")]
REPO = Path(__file__).resolve().parents[2]
VALUE = b"exit-code-canary-91c2"


def run(args: list[str], folder: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    env["SECRETSD_DIR"] = str(folder)
    return subprocess.run([*SECRETSD, *args], input=stdin, capture_output=True, env=env, timeout=60)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "secrets.d"
    assert run(["set", "GOOD", "-"], d, VALUE).returncode == 0
    return d


def value_of(folder: Path, key: str) -> bytes:
    res = run(["get", key], folder)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("expect", ["zzzz", "", "12 34", "g" * 8, "a" * 65, "-1"], ids=repr)
def test_a_non_hex_expect_is_a_validation_error(expect: str, folder: Path) -> None:
    res = run(["set", "GOOD", "-", "--expect", expect], folder, b"new")
    assert res.returncode == 2, res.stderr
    assert b"--expect" in res.stderr and b"conflict" not in res.stderr
    assert b"Traceback" not in res.stderr and VALUE not in res.stderr
    assert value_of(folder, "GOOD") == VALUE  # nothing written


def test_a_hex_expect_still_checks_and_conflicts(folder: Path) -> None:
    sha = hashlib.sha256(VALUE).hexdigest()
    res = run(["set", "GOOD", "-", "--expect", "DEADBEEF"], folder, b"new")
    assert res.returncode == 1 and b"conflict" in res.stderr
    assert run(["set", "NEW", "-", "--expect", "absent"], folder, b"n").returncode == 0
    assert run(["set", "GOOD", "-", "--expect", sha[:8].upper()], folder, b"v2").returncode == 0
    assert value_of(folder, "GOOD") == b"v2"


def test_expect_with_a_batch_is_a_usage_error(folder: Path) -> None:
    res = run(["set", "--from-json", "-", "--expect", "deadbeef"], folder, b'{"GOOD": "x"}')
    assert res.returncode == 2 and b"--expect" in res.stderr
    assert value_of(folder, "GOOD") == VALUE  # it used to ignore --expect and write


@pytest.mark.parametrize("args,needle", [
    (["get", "bad name"], b"invalid name"),
    (["get", ""], b"empty name"),
    (["get", "PATH"], b"reserved name"),
    (["get", "../GOOD"], b"invalid name"),
    (["rm", "bad!"], b"invalid name"),
    (["rm", "GOOD", "bad!"], b"invalid name"),  # all or nothing: GOOD stays
    (["rm", "LD_PRELOAD"], b"reserved name"),
], ids=["get-space", "get-empty", "get-PATH", "get-dotdot", "rm-bang", "rm-good-and-bang", "rm-LD_PRELOAD"])
def test_names_that_can_never_be_secrets_are_validation_errors(args: list[str], needle: bytes, folder: Path) -> None:
    res = run(args, folder)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and b"no such secret" not in res.stderr
    assert b"Traceback" not in res.stderr and VALUE not in res.stdout + res.stderr
    assert value_of(folder, "GOOD") == VALUE


def test_a_valid_absent_name_is_still_not_found(folder: Path) -> None:
    for args in (["get", "ABSENT"], ["rm", "ABSENT"]):
        res = run(args, folder)
        assert res.returncode == 1 and b"no such secret" in res.stderr


def test_exec_126_and_127_like_env_and_documented(folder: Path, tmp_path: Path) -> None:
    assert run(["exec", "--", str(tmp_path / "no-such-program")], folder).returncode == 127
    assert run(["exec", "--", "no-such-program-on-path-3f1"], folder).returncode == 127
    not_exec = tmp_path / "script.sh"
    not_exec.write_text("#!/bin/sh\nexit 0\n")
    not_exec.chmod(0o644)  # no x bit: EACCES, even for root
    assert run(["exec", "--", str(not_exec)], folder).returncode == 126
    assert run(["exec", "--", str(tmp_path)], folder).returncode == 126  # a folder
    assert run(["exec", "--", "sh", "-c", "exit 3"], folder).returncode == 3
    helptext = run(["exec", "--help"], folder).stdout
    assert b"126" in helptext and b"127" in helptext
    readme = (REPO / "README.md").read_text()
    cli_section = readme[readme.index("## CLI"):readme.index("## The API")]
    assert "126" in cli_section and "127" in cli_section


@pytest.mark.skipif(os.geteuid() != 0 or not __import__("shutil").which("setpriv"),
                    reason="needs root and setpriv to run the CLI as an unprivileged user")
@pytest.mark.parametrize("args", [["set", "K", "-"], ["init"], ["ls"], ["doctor"]])
def test_a_folder_behind_a_parent_this_user_cannot_enter_is_a_clear_error(tmp_path: Path, args: list[str]) -> None:
    """As uid 1000 under a root-only (0700) parent: `set`/`init` printed a traceback (PermissionError
    from makedirs), `doctor` said the folder does not exist."""
    from access import reachable_by_others

    if not reachable_by_others(sys.prefix) or not reachable_by_others(Path(__file__).parents[2] / "src"):
        pytest.skip("the checkout or its virtualenv is not reachable by other users (e.g. a 0700 clone)")
    os.chmod(tmp_path, 0o755)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    argv = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", sys.executable, "-m", "secretsd.cli",
            *args, "--dir", str(private / "secrets.d")]
    res = subprocess.run(argv, input=b"v", capture_output=True, timeout=60)
    assert res.returncode == 1, res
    assert b"Traceback" not in res.stderr and b"Permission denied" in res.stderr, res.stderr
    assert b"does not exist" not in res.stderr
