"""Every loader exports exactly what the shared table says, byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secretsd.format.loader import load_into, read_dir

from .cases import CASES, Case
from .shells import available_shells, install_loader, loaded


def _build(tmp_path: Path, case: Case) -> Path:
    d = tmp_path / "secrets.d"
    install_loader(d)
    case.build(d)
    return d


@pytest.mark.parametrize("shell", available_shells())
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_shell_loader(shell: list[str], case: Case, tmp_path: Path) -> None:
    d = _build(tmp_path, case)
    env, err = loaded(shell, d, prelude="set -eu")  # the loader must never stop its caller
    for k, v in case.exports.items():
        assert env.get(k.encode()) == v, f"{k} differs"
    for p in d.iterdir():
        if p.name in case.exports or p.name == "load.sh" or not p.is_file():
            continue
        # Not exported: absent, or still what the caller had (PATH, SECRETSD_DIR).
        assert env.get(p.name.encode()) != p.read_bytes(), f"{p.name} must not be exported"
    for name in case.absent:
        assert name.encode() not in env
    for w in case.warns:
        assert w.encode() in err, f"no warning naming {w}"
    for p in d.iterdir():  # no value, exported or skipped, may reach stderr
        if p.is_file() and p.name != "load.sh" and len(p.read_bytes()) > 3:
            assert p.read_bytes() not in err, f"the value of {p.name} leaked to stderr"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_python_loader(case: Case, tmp_path: Path) -> None:
    d = _build(tmp_path, case)
    result = read_dir(d)
    assert result.values == case.exports
    joined = "\n".join(result.warnings)
    for w in case.warns:
        assert w in joined


def test_python_load_into_overrides_and_is_bytes_exact(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    (d / "TOKEN").write_bytes(b"new\n")
    env = {"TOKEN": "stale", "KEEP": "1"}
    load_into(env, d, warn=False)
    assert env == {"TOKEN": "new\n", "KEEP": "1"}
    benv = {b"TOKEN": b"stale"}
    load_into(benv, d, warn=False)
    assert benv == {b"TOKEN": b"new\n"}


def test_python_loader_missing_folder_is_quiet(tmp_path: Path) -> None:
    result = read_dir(tmp_path / "nope")
    assert result.values == {} and result.warnings == []


def test_python_loader_defaults_to_env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "X").write_bytes(b"1")
    monkeypatch.setenv("SECRETSD_DIR", str(tmp_path))
    assert read_dir().values == {"X": b"1"}
    assert os.environ.get("X") is None
