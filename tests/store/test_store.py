"""The store against real SQLite and a real PostgreSQL server."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import select, update

from secretsd.store import GLOBAL, AlreadyExists, KeyRing, NotFound, Store, VersionConflict
from secretsd.store import schema as S


def canary() -> bytes:
    import uuid

    return f"CANARY-{uuid.uuid4().hex}".encode()


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Store:
    s = Store.open(db_url, KeyRing.load(tmp_path / "data", env={}))
    s.create_workspace("w1", None, {}, actor="t")
    s.create_workspace("w2", None, {}, actor="t")
    yield s
    s.close()


def test_put_versions_and_effective(store: Store) -> None:
    assert store.put("w1", {"A": b"1", "B": b"2"}, actor="t").versions == {"A": 1, "B": 1}
    assert store.put("w1", {"A": b"3"}, actor="t").versions == {"A": 2}
    assert store.effective("w1") == {"A": b"3", "B": b"2"}
    assert store.effective("w1", ["A", "Z"]) == {"A": b"3"}
    assert store.effective("w2") == {}
    metas = {m.name: m for m in store.list_secrets("w1")}
    assert metas["A"].version == 2 and metas["A"].size == 1 and metas["A"].scope == "workspace"


def test_unknown_workspace_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.put("nope", {"A": b"1"}, actor="t")
    with pytest.raises(AlreadyExists):
        store.create_workspace("w1", None, {}, actor="t")


def test_versions_monotonic_across_delete_and_pruned_to_keep(store: Store) -> None:
    for i in range(15):
        store.put("w1", {"K": str(i).encode()}, actor="t")
    store.delete_secret("w1", "K", actor="t")
    with pytest.raises(NotFound):
        store.delete_secret("w1", "K", actor="t")
    assert "K" not in store.effective("w1")
    assert store.put("w1", {"K": b"again"}, actor="t").versions == {"K": 16}
    vs = store.versions("w1", "K")
    assert [v.version for v in vs] == list(range(16, 6, -1))  # the last 10 kept
    assert vs[0].current and not any(v.current for v in vs[1:])


def test_rollback_writes_a_new_version(store: Store) -> None:
    for v in (b"one", b"two", b"three"):
        store.put("w1", {"K": v}, actor="t")
    assert store.rollback("w1", "K", 1, actor="t").versions == {"K": 4}
    assert store.effective("w1")["K"] == b"one"
    with pytest.raises(NotFound):
        store.rollback("w1", "K", 99, actor="t")
    with pytest.raises(NotFound):
        store.rollback("w1", "NOPE", 1, actor="t")


def test_expected_versions(store: Store) -> None:
    store.put("w1", {"K": b"a"}, actor="t", expected={"K": 0})
    with pytest.raises(VersionConflict) as ei:
        store.put("w1", {"K": b"b", "L": b"c"}, actor="t", expected={"K": 5, "L": 0})
    assert ei.value.conflicts == {"K": (5, 1)}
    assert store.effective("w1") == {"K": b"a"}  # nothing stored
    store.put("w1", {"K": b"b"}, actor="t", expected={"K": 1})


def test_global_inheritance_override_and_pending(store: Store) -> None:
    store.put("w1", {"G": b"mine"}, actor="t")
    store.clear_pending("w1")
    change = store.put(GLOBAL, {"G": b"global", "H": b"h"}, actor="t")
    assert change.workspaces == ["w1", "w2"]
    assert store.pending_for("w1") == ["H"]  # w1 overrides G: only H reaches it
    assert store.pending_for("w2") == ["G", "H"]
    assert store.effective("w1") == {"G": b"mine", "H": b"h"}
    assert store.effective("w2") == {"G": b"global", "H": b"h"}
    scopes = {m.name: m.scope for m in store.list_secrets("w1")}
    assert scopes == {"G": "workspace", "H": "global"}
    store.delete_secret("w1", "G", actor="t")
    assert store.effective("w1")["G"] == b"global"
    store.clear_pending("w2", ["G"])
    assert store.pending_for("w2") == ["H"]
    assert store.pending_count() == 3  # w1: G, H; w2: H
    assert store.pending_workspaces() == ["w1", "w2"]


def test_values_encrypted_with_versioned_rows_and_bound_to_their_row(store: Store) -> None:
    secret = canary()
    store.put("w1", {"A": secret, "B": b"other"}, actor="t")
    with store.engine.connect() as c:
        rows = c.execute(select(S.secret_versions)).all()
        assert all(r.encryption_version == 1 and r.key_version == 1 for r in rows)
        assert all(secret not in bytes(r.blob) for r in rows)
        a = next(r for r in rows if r.name == "A")
        b = next(r for r in rows if r.name == "B")
    # Swap ciphertexts between rows: AES-GCM's associated data refuses it.
    with store.engine.begin() as c:
        c.execute(update(S.secret_versions).where(S.secret_versions.c.name == "B").values(blob=a.blob))
    from secretsd.store.crypto import KeyRingError

    with pytest.raises(KeyRingError):
        store.effective("w1", ["B"])
    assert b.blob != a.blob


def test_audit_rows_have_fingerprints_never_values(store: Store) -> None:
    secret = canary()
    store.put("w1", {"A": secret}, actor="admin:abcd1234")
    store.delete_secret("w1", "A", actor="admin:abcd1234")
    events = store.audit_events(workspace="w1", key="A")
    assert [e.action for e in events] == ["delete", "set"]
    import hashlib

    assert events[1].sha8 == hashlib.sha256(secret).hexdigest()[:8]
    assert events[1].version == 1 and events[1].actor == "admin:abcd1234"
    with store.engine.connect() as c:
        for row in c.execute(select(S.audit)).all():
            assert secret.decode() not in repr(tuple(row))


def test_idempotency_records(store: Store) -> None:
    assert store.idempotent_answer("k", "s") is None
    store.record_answer("k", "s", "sha", 200, "{}")
    got = store.idempotent_answer("k", "s")
    assert got is not None and got.status == 200 and got.request_sha == "sha"
    store.record_answer("k", "s", "sha", 503, '{"x":1}')
    assert store.idempotent_answer("k", "s").status == 503  # type: ignore[union-attr]


def test_workspace_snapshot_encrypted_and_delete(store: Store) -> None:
    secret = canary().decode()
    store.create_workspace("w3", "tpl", {"TOKEN": secret}, actor="t")
    assert store.get_workspace("w3").env_names == ["TOKEN"]
    assert store.workspace_env("w3") == {"TOKEN": secret}
    with store.engine.connect() as c:
        blob = c.execute(select(S.workspaces.c.env_blob).where(S.workspaces.c.id == "w3")).scalar_one()
    assert secret.encode() not in bytes(blob)
    store.put("w3", {"A": b"x"}, actor="t")
    store.delete_workspace("w3", actor="t")
    with pytest.raises(NotFound):
        store.get_workspace("w3")
    assert store.pending_for("w3") == []


def test_concurrent_writers_get_unique_contiguous_versions(db_url: str, tmp_path: Path) -> None:
    # Separate Store objects (separate pools) race like separate processes would.
    kr = KeyRing.load(tmp_path / "data", env={})
    first = Store.open(db_url, kr)
    first.create_workspace("w", None, {}, actor="t")
    stores = [first] + [Store.open(db_url, kr) for _ in range(3)]
    got: list[int] = []
    errors: list[BaseException] = []

    def worker(s: Store, n: int) -> None:
        try:
            for i in range(10):
                got.append(s.put("w", {"K": f"{n}-{i}".encode()}, actor="t").versions["K"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s, n)) for n, s in enumerate(stores * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(got) == list(range(1, 81))
    for s in stores:
        s.close()


def test_schema_creation_is_idempotent(db_url: str, tmp_path: Path) -> None:
    kr = KeyRing.load(tmp_path / "data", env={})
    Store.open(db_url, kr).close()
    s = Store.open(db_url, kr)
    s.create_workspace("w", None, {}, actor="t")
    s.close()


def test_store_does_not_import_the_control_plane() -> None:
    code = "import sys, secretsd.store, secretsd.store.commands; " \
           "bad=[m for m in sys.modules if m.startswith('secretsd.controlplane')]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
    src = Path(__file__).resolve().parents[2] / "src" / "secretsd" / "store"
    for f in src.rglob("*.py"):
        assert "secretsd.controlplane" not in f.read_text(), f


def test_sqlite_files_are_private_and_hold_no_plaintext(tmp_path: Path) -> None:
    secret = canary()
    url = f"sqlite:///{tmp_path / 'db' / 'secretsd.db'}"
    s = Store.open(url, KeyRing.load(tmp_path, env={}))
    s.create_workspace("w", None, {"SNAP": secret.decode()}, actor="t")
    for i in range(3):
        s.put("w", {"A": secret + str(i).encode()}, actor="t")
    s.put(GLOBAL, {"G": secret}, actor="t")
    files = list((tmp_path / "db").iterdir())
    assert {f.name for f in files} >= {"secretsd.db", "secretsd.db-wal"}
    for f in files:
        assert f.stat().st_mode & 0o077 == 0, f
        assert secret not in f.read_bytes(), f
    s.close()


def test_clearing_pending_marks_never_drops_a_newer_change(store: Store) -> None:
    first = store.put("w1", {"A": b"1"}, actor="t")
    second = store.put("w1", {"A": b"2"}, actor="t")  # re-stamps the mark
    assert second.at >= first.at
    store.clear_pending("w1", ["A"], upto=first.at - 1e-6)
    assert store.pending_for("w1") == ["A"]
    store.clear_pending("w1", ["A"], upto=second.at)
    assert store.pending_for("w1") == []


def test_fits_refuses_inside_the_transaction(store: Store) -> None:
    store.put(GLOBAL, {"G": b"12345"}, actor="t")
    store.put("w1", {"A": b"1"}, actor="t")
    seen: list[dict[str, int]] = []

    def fits(owner: str, sizes: dict[str, int]) -> None:
        seen.append(sizes)
        assert owner == "w1"
        raise ValueError("too big")

    with pytest.raises(ValueError):
        store.put("w1", {"B": b"22"}, actor="t", fits=fits)
    assert seen == [{"G": 5, "A": 1, "B": 2}]
    assert "B" not in store.effective("w1")


def test_group_commit_refused_requests_leave_the_others(store: Store) -> None:
    """put_groups: each request in its own savepoint; a refused one (any reason) is handed back alone."""
    from secretsd.store.store import PutRequest

    store.put("w1", {"A": b"1"}, actor="t")
    store.put("w2", {"Z": b"9"}, actor="t")

    def fits(_owner: str, sizes: dict[str, int]) -> None:
        if "HUGE" in sizes:
            raise ValueError("too big")

    groups = [
        ("w1", [PutRequest({"A": b"2", "B": b"b"}, "t"),
                PutRequest({"A": b"x"}, "t", expected={"A": 1}),  # stale: A is at 2 by now
                PutRequest({"HUGE": b"h", "C": b"c"}, "t"),  # refused by fits
                PutRequest({"A": b"3"}, "t", expected={"A": 2})]),
        ("nope", [PutRequest({"A": b"1"}, "t")]),  # no such workspace
        ("w2", [PutRequest({"Z": b"10", "Y": b"y"}, "t")]),
    ]
    res = store.put_groups(groups, fits=fits)
    assert res[0][0].versions == {"A": 2, "B": 1}
    assert isinstance(res[0][1], VersionConflict)
    assert isinstance(res[0][2], ValueError)
    assert res[0][3].versions == {"A": 3}
    assert isinstance(res[1][0], NotFound)
    assert res[2][0].versions == {"Y": 1, "Z": 2}
    assert res[2][0].workspaces == ["w2"]
    assert store.effective("w1") == {"A": b"3", "B": b"b"}
    assert store.effective("w2") == {"Z": b"10", "Y": b"y"}
    assert store.pending_for("w1") == ["A", "B"] and store.pending_for("w2") == ["Y", "Z"]
    assert store.pending_workspaces() == ["w1", "w2"]
    events = store.audit_events(workspace="w1")
    assert [(e.key, e.version) for e in events if e.action == "set"] == [("A", 3), ("B", 1), ("A", 2), ("A", 1)]
    # Single-request groups take the path without savepoints: same answers.
    one = store.put_groups([("w1", [PutRequest({"A": b"4"}, "t", expected={"A": 1})])])
    assert isinstance(one[0][0], VersionConflict)
    assert store.put_groups([("w1", [PutRequest({"A": b"4"}, "t", expected={"A": 3})])])[0][0].versions == {"A": 4}
    assert store.put_many("w2", [PutRequest({"Y": b"2"}, "t"), PutRequest({"Q": b"q"}, "t", expected={"Q": 5})])[0].versions == {"Y": 2}


def test_group_commit_many_keys_prunes_and_restamps_marks(store: Store) -> None:
    from secretsd.store.store import PutRequest

    names = [f"K{i}" for i in range(12)]
    for i in range(12):
        store.put_groups([("w1", [PutRequest({n: f"{i}".encode() for n in names}, "t")]),
                          ("w2", [PutRequest({"S": f"{i}".encode()}, "t")])])
    assert store.effective("w1") == {n: b"11" for n in names}
    assert [v.version for v in store.versions("w1", "K5")] == list(range(12, 2, -1))
    at = store.put("w1", {"K0": b"new"}, actor="t").at
    store.clear_pending("w1", names, upto=at - 1e-6)  # an older write: K0's newer mark stays
    assert store.pending_for("w1") == ["K0"]


def test_driver_errors_on_the_hot_path_are_sqlalchemy_errors(store: Store) -> None:
    """The hot path runs on the driver's cursor; its errors must still be SQLAlchemy's (the API maps them)."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError, ProgrammingError

    canary_value = canary()
    with store.engine.begin() as c:
        c.execute(text("DROP TABLE pending"))
    with pytest.raises((OperationalError, ProgrammingError)) as info:
        store.put("w1", {"A": canary_value}, actor="t")
    assert canary_value.decode() not in str(info.value)
    assert "A" not in store.effective("w1")  # the whole change rolled back
