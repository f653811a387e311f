"""Key ring and rotation (``secretsd rotate-key``)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from secretsd.store import KeyRing, Store
from secretsd.store import schema as S
from secretsd.store.commands import rotate_key
from secretsd.store.crypto import KEY_FILE_NAME, KeyRingError, new_key, parse_env_keys, read_key_file
from secretsd.store.rotation import rotate


def test_key_file_generated_0600_and_reused(tmp_path: Path) -> None:
    kr = KeyRing.load(tmp_path, env={})
    path = tmp_path / KEY_FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert KeyRing.load(tmp_path, env={}).versions == kr.versions == [1]
    blob, ver = kr.encrypt(b"x", b"aad")
    assert KeyRing.load(tmp_path, env={}).decrypt(blob, b"aad", ver) == b"x"


def test_env_key_wins_and_is_validated(tmp_path: Path) -> None:
    k = base64.b64encode(new_key()).decode()
    kr = KeyRing.load(tmp_path, env={"SECRETSD_ENCRYPTION_KEY": k})
    assert kr.path is None and kr.versions == [1]
    assert not (tmp_path / KEY_FILE_NAME).exists()
    assert parse_env_keys(f"1:{k},3:{k}").keys() == {1, 3}
    for bad in ("not base64!", base64.b64encode(b"short").decode(), "x:" + k):
        with pytest.raises(KeyRingError) as ei:
            KeyRing.load(tmp_path, env={"SECRETSD_ENCRYPTION_KEY": bad})
        assert k not in str(ei.value)


def _rows(store: Store) -> list[int]:
    with store.engine.connect() as c:
        return sorted(set(c.execute(select(S.secret_versions.c.key_version)).scalars())
                      | set(c.execute(select(S.workspaces.c.key_version)).scalars()))


def test_rotate_with_key_file(db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = Store.open(db_url, KeyRing.load(data, env={}))
    store.create_workspace("w", None, {"SNAP": "s"}, actor="t")
    for i in range(5):
        store.put("w", {"A": f"v{i}".encode(), "B": b"b"}, actor="t")
    server_view = Store(store.engine, KeyRing.load(data, env={}))  # a "running server" with the old ring
    rep = rotate(store)
    assert rep.new_version == 2 and rep.retired == [1] and rep.still_in_use == []
    assert rep.rewritten == 5 + 5 + 1  # A and B v1..5, the snapshot
    assert read_key_file(data / KEY_FILE_NAME).keys() == {2}
    assert (data / KEY_FILE_NAME).stat().st_mode & 0o777 == 0o600
    assert _rows(store) == [2]
    # The server re-reads the key file and keeps working.
    assert server_view.effective("w") == {"A": b"v4", "B": b"b"}
    assert server_view.workspace_env("w") == {"SNAP": "s"}
    assert server_view.rollback("w", "A", 1, actor="t").versions == {"A": 6}
    assert _rows(store) == [2]
    store.close()


def test_rotate_key_command_with_env_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    k1, k2 = (base64.b64encode(new_key()).decode() for _ in range(2))
    monkeypatch.setenv("SECRETSD_ENCRYPTION_KEY", k1)
    s = Store.open(url, KeyRing.load(tmp_path))
    s.create_workspace("w", None, {}, actor="t")
    s.put("w", {"A": b"x"}, actor="t")
    s.close()
    monkeypatch.setenv("SECRETSD_ENCRYPTION_KEY", f"1:{k1},2:{k2}")
    res = CliRunner().invoke(rotate_key, ["--data", str(tmp_path), "--db", url])
    assert res.exit_code == 0, res.output
    assert "current key version: 2" in res.output and k1 not in res.output and k2 not in res.output
    monkeypatch.setenv("SECRETSD_ENCRYPTION_KEY", f"2:{k2}")  # the old key can now go
    s = Store.open(url, KeyRing.load(tmp_path))
    assert s.effective("w") == {"A": b"x"}
    s.close()


def test_rotate_key_command_with_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECRETSD_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("SECRETSD_DB", raising=False)
    s = Store.open(f"sqlite:///{tmp_path / 'secretsd.db'}", KeyRing.load(tmp_path))
    s.create_workspace("w", None, {}, actor="t")
    s.put("w", {"A": b"x"}, actor="t")
    s.close()
    res = CliRunner().invoke(rotate_key, ["--data", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "retired key versions: 1" in res.output
    s = Store.open(f"sqlite:///{tmp_path / 'secretsd.db'}", KeyRing.load(tmp_path))
    assert s.effective("w") == {"A": b"x"} and _rows(s) == [2]
    s.close()
