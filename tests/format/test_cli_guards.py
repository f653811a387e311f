"""The folder commands refuse a folder that is not a secrets.d folder and
never create missing parents (only `init` does): `secretsd repair --dir ~`
or `set --dir /etc` used to chmod it 0700, chown it, adopt its files and add
load.sh. Run through the real console script on real folders."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SECRETSD = [str(Path(sys.executable).parent / "secretsd")]
CANARY = b"guard-canary-7f3a"


def run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    return subprocess.run([*SECRETSD, *args], input=stdin, capture_output=True, env=env, timeout=60)


def snapshot(folder: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every entry below ``folder`` (itself included): mode, uid, gid, content."""
    out = {}
    for p in [folder, *sorted(folder.rglob("*"))]:
        st = os.lstat(p)
        body = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(p.relative_to(folder))] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, body)
    return out


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """A folder someone points --dir at by mistake: a project or home folder."""
    d = tmp_path / "project"
    (d / "sub").mkdir(parents=True)
    (d / "README").write_bytes(b"not a secret\n")
    (d / "TOKEN").write_bytes(CANARY)  # even a file with a valid variable name
    (d / "sub" / "x").write_bytes(b"x")
    os.chmod(d, 0o755)
    os.chmod(d / "README", 0o644)
    return d


COMMANDS = {
    "set": (["set", "A", "-"], b"value"),
    "set-json": (["set", "--from-json", "-"], b'{"A": "v"}'),
    "rm": (["rm", "TOKEN"], None),
    "repair": (["repair"], None),
    "ls": (["ls"], None),
    "ls-json": (["ls", "--json"], None),
    "doctor": (["doctor"], None),
    "doctor-json": (["doctor", "--json"], None),
    "get": (["get", "TOKEN"], None),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_foreign_folder_is_refused_and_left_untouched(name: str, foreign: Path) -> None:
    args, stdin = COMMANDS[name]
    before = snapshot(foreign)
    proc = run([*args, "--dir", str(foreign)], stdin)
    assert proc.returncode == 2, (name, proc.stderr)
    assert b"does not look like a secrets.d folder" in proc.stderr
    assert b"secretsd init --dir NEW_FOLDER" in proc.stderr and str(foreign).encode() in proc.stderr
    assert b"Traceback" not in proc.stderr and CANARY not in proc.stdout + proc.stderr
    assert snapshot(foreign) == before  # no chmod, no chown, no load.sh, no ..data, nothing adopted


def test_init_is_the_way_to_take_a_folder_over(foreign: Path) -> None:
    assert run(["init", "--dir", str(foreign)]).returncode == 0
    assert (foreign / "load.sh").is_file()
    assert run(["set", "A", "-", "--dir", str(foreign)], b"v").returncode == 0
    assert run(["get", "A", "--dir", str(foreign)]).stdout == b"v"


def test_a_kubernetes_volume_or_an_empty_folder_is_accepted(tmp_path: Path) -> None:
    k8s = tmp_path / "k8s"
    (k8s / "..2024_01_01").mkdir(parents=True)
    (k8s / "..2024_01_01" / "TOKEN").write_bytes(b"t")
    os.symlink("..2024_01_01", k8s / "..data")
    os.symlink("..data/TOKEN", k8s / "TOKEN")
    proc = run(["ls", "--json", "--dir", str(k8s)])
    assert proc.returncode == 0 and b'"TOKEN"' in proc.stdout, proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["set", "A", "-", "--dir", str(empty)], b"v").returncode == 0
    assert stat.S_IMODE(os.stat(empty).st_mode) == 0o700


def test_set_creates_the_folder_but_never_its_parents(tmp_path: Path) -> None:
    deep = tmp_path / "no" / "such" / "secrets.d"
    proc = run(["set", "A", "-", "--dir", str(deep)], b"v")
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert f"no such folder: {tmp_path / 'no' / 'such'}".encode() in proc.stderr
    assert not (tmp_path / "no").exists()
    # The parent exists: set creates the folder (0700) as it always did.
    near = tmp_path / "secrets.d"
    assert run(["set", "A", "-", "--dir", str(near)], b"v").returncode == 0
    assert stat.S_IMODE(os.stat(near).st_mode) == 0o700 and (near / "load.sh").is_file()
    # init still creates missing parents, on purpose.
    assert run(["init", "--dir", str(deep)]).returncode == 0 and (deep / "load.sh").is_file()


@pytest.mark.parametrize("args", [["ls"], ["get", "A"], ["rm", "A"], ["repair"]], ids=lambda a: a[0])
def test_a_missing_folder_is_named_and_not_created(args: list[str], tmp_path: Path) -> None:
    given = tmp_path / "nonexistent" / "x"
    proc = run([*args, "--dir", str(given)])
    assert proc.returncode == 1, proc.stderr
    assert f"no such folder: {given} ".encode() in proc.stderr  # the folder given, not its parent
    assert b"Traceback" not in proc.stderr
    assert not (tmp_path / "nonexistent").exists()
    # Parent present, folder missing: rm and repair must not create it either.
    sibling = tmp_path / "missing"
    proc = run([*args, "--dir", str(sibling)])
    assert proc.returncode == 1 and f"no such folder: {sibling} ".encode() in proc.stderr
    assert not sibling.exists()


def test_doctor_reports_a_missing_folder_as_a_finding(tmp_path: Path) -> None:
    proc = run(["doctor", "--json", "--dir", str(tmp_path / "gone")])
    assert proc.returncode == 1 and b'"MISSING"' in proc.stdout
    assert not (tmp_path / "gone").exists()
