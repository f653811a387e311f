"""`secretsd rotate-key` rotates an existing store only: a data folder with
no store or no key is an error naming it, and nothing is created (it used to
create an empty store and a key and report success). Real subprocesses of the
console script on real SQLite files, and a real PostgreSQL when available."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect

from secretsd.store import KeyRing, Store
from secretsd.store.crypto import KEY_FILE_NAME

SECRETSD = [str(Path(sys.executable).parent / "secretsd")]


def rotate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    e.update(env or {})
    return subprocess.run([*SECRETSD, "rotate-key", *args], capture_output=True, text=True, env=e, timeout=60)


def _store(data: Path) -> None:
    s = Store.open(f"sqlite:///{data / 'secretsd.db'}", KeyRing.load(data, env={}))
    s.create_workspace("w", None, {}, actor="t")
    s.put("w", {"A": b"x"}, actor="t")
    s.close()


def test_a_missing_data_folder_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "nonexistent"
    res = rotate("--data", str(data))
    assert res.returncode == 1, res.stdout + res.stderr
    assert str(data) in res.stderr and "no store" in res.stderr
    assert "current key version" not in res.stdout and "Traceback" not in res.stderr
    assert not data.exists()


def test_an_empty_data_folder_is_an_error_and_stays_empty(tmp_path: Path) -> None:
    res = rotate("--data", str(tmp_path))
    assert res.returncode == 1 and "no store" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_store_without_its_key_file_is_an_error(tmp_path: Path) -> None:
    _store(tmp_path)
    (tmp_path / KEY_FILE_NAME).unlink()
    res = rotate("--data", str(tmp_path))
    assert res.returncode == 1 and "no encryption key" in res.stderr and KEY_FILE_NAME in res.stderr
    assert not (tmp_path / KEY_FILE_NAME).exists()  # no fresh key written next to the old rows


def test_an_existing_store_still_rotates(tmp_path: Path) -> None:
    _store(tmp_path)
    res = rotate("--data", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "current key version: 2" in res.stdout and "retired key versions: 1" in res.stdout


def test_bad_and_unreachable_urls(tmp_path: Path) -> None:
    res = rotate("--data", str(tmp_path), "--db", "bogus://u:SECRETPW@h/db")
    assert res.returncode == 2 and "SECRETPW" not in res.stderr and "Traceback" not in res.stderr
    res = rotate("--data", str(tmp_path), "--db", "postgresql://u:SECRETPW@127.0.0.1:1/db")
    assert res.returncode == 1 and "SECRETPW" not in res.stderr and "Traceback" not in res.stderr
    assert "u:***@127.0.0.1" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_empty_postgresql_database_is_not_a_store(tmp_path: Path, pg_url: str) -> None:
    res = rotate("--data", str(tmp_path), "--db", pg_url)
    assert res.returncode == 1 and "no secretsd store" in res.stderr, res.stderr
    engine = create_engine(pg_url)
    try:
        assert inspect(engine).get_table_names() == []  # no schema created
    finally:
        engine.dispose()
