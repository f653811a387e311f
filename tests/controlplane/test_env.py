"""Secrets routes: write-through, atomic batches, versions, rollback, global scope, idempotency."""

from __future__ import annotations

import hashlib

import pytest

from .conftest import Env


def versions(env: Env, ws: str | None, name: str) -> list[int]:
    url = f"/cp/admin/workspaces/{ws}/env/{name}/versions" if ws else f"/cp/admin/env/{name}/versions"
    r = env.client.get(url)
    assert r.status_code == 200, r.text
    return [v["version"] for v in r.json()["versions"]]


def test_push_batch_writes_through_and_answers_after_durable(env: Env) -> None:
    value = "line1\nline2\n"
    r = env.push("w1", {"GITHUB_TOKEN": "ghp_x", "PEM": value})
    assert r.status_code == 200
    assert r.json() == {"workspace_id": "w1", "keys": ["GITHUB_TOKEN", "PEM"], "versions": {"GITHUB_TOKEN": 1, "PEM": 1},
                        "persisted": True, "restarted": False, "failed_workspaces": [], "error": None}
    assert env.folder("w1") == {"GITHUB_TOKEN": b"ghp_x", "PEM": value.encode()}
    sd = env.data / "workspaces/w1/configs/secrets.d"
    assert (sd / "load.sh").is_file() and sd.stat().st_mode & 0o777 == 0o700


def test_single_form_and_version_increments(env: Env) -> None:
    for i in range(1, 4):
        r = env.client.post("/cp/admin/workspaces/w1/env", json={"key": "A", "value": f"v{i}"})
        assert r.status_code == 200 and r.json()["versions"] == {"A": i}
    assert env.folder("w1") == {"A": b"v3"}


def test_unknown_workspace_is_404(env: Env) -> None:
    r = env.push("ghost", {"A": "x"})
    assert r.status_code == 404 and r.json() == {"error": "workspace not found", "key": "ghost"}
    assert not (env.data / "workspaces/ghost").exists()


def test_atomic_batch_names_every_offending_key_and_writes_nothing(env: Env) -> None:
    env.push("w1", {"KEEP": "old"})
    audit_before = env.client.get("/cp/admin/audit").json()["events"]
    body = '{"env": {"GOOD": "x", "PATH": "/bin", "1BAD": "x", "NUL": "a\\u0000b", "SURR": "\\ud800", "KEEP": "new"}}'
    r = env.client.post("/cp/admin/workspaces/w1/env", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    got = r.json()
    assert {p["key"] for p in got["problems"]} == {"PATH", "'1BAD'", "NUL", "SURR"}
    for name in ("PATH", "1BAD", "NUL", "SURR"):
        assert name in got["error"]
    assert "GOOD" not in got["error"]
    assert env.folder("w1") == {"KEEP": b"old"}
    names = {s["name"]: s["version"] for s in env.client.get("/cp/admin/workspaces/w1/env").json()["secrets"]}
    assert names == {"KEEP": 1}
    assert env.client.get("/cp/admin/audit").json()["events"] == audit_before


def test_value_too_large_is_413_naming_the_key(env: Env) -> None:
    r = env.push("w1", {"OK": "x", "BIG": "x" * 140_000})
    assert r.status_code == 413 and r.json()["key"] == "BIG"
    assert env.folder("w1") == {}


def test_folder_budget_is_413_and_nothing_written(env: Env) -> None:
    chunk = "x" * 120_000
    assert env.push("w1", {f"K{i}": chunk for i in range(8)}).status_code == 200
    r = env.push("w1", {"K8": chunk, "K9": chunk})
    assert r.status_code == 413 and "budget" in r.json()["error"]
    assert sorted(env.folder("w1")) == [f"K{i}" for i in range(8)]


def test_list_shows_metadata_never_values(env: Env) -> None:
    env.push("w1", {"A": "secret-a"})
    env.push(None, {"G": "secret-g"})
    r = env.client.get("/cp/admin/workspaces/w1/env")
    assert "secret-" not in r.text
    items = {s["name"]: s for s in r.json()["secrets"]}
    assert items["A"]["scope"] == "workspace" and items["G"]["scope"] == "global"
    assert items["A"]["sha256_8"] == hashlib.sha256(b"secret-a").hexdigest()[:8]
    assert items["A"]["size"] == 8 and items["A"]["version"] == 1 and items["A"]["updated_at"].endswith("Z")
    assert [s["name"] for s in env.client.get("/cp/admin/env").json()["secrets"]] == ["G"]
    assert env.client.get("/cp/admin/workspaces/ghost/env").status_code == 404


def test_delete(env: Env) -> None:
    env.push("w1", {"A": "1", "B": "2"})
    r = env.client.delete("/cp/admin/workspaces/w1/env/A")
    assert r.status_code == 200 and r.json()["deleted_version"] == 1 and r.json()["persisted"] is True
    assert env.folder("w1") == {"B": b"2"}
    assert env.client.delete("/cp/admin/workspaces/w1/env/A").status_code == 404
    assert env.client.delete("/cp/admin/workspaces/w1/env/NEVER").status_code == 404
    assert env.client.delete("/cp/admin/workspaces/w1/env/1bad").status_code == 400
    assert env.client.delete("/cp/admin/workspaces/ghost/env/A").status_code == 404
    # Versions continue after a delete.
    assert env.push("w1", {"A": "again"}).json()["versions"] == {"A": 2}


def test_versions_and_rollback(env: Env) -> None:
    for i in range(1, 13):
        env.push("w1", {"K": f"value-{i}"})
    vs = versions(env, "w1", "K")
    assert vs == list(range(12, 2, -1))  # at least the last 10
    r = env.client.post("/cp/admin/workspaces/w1/env/K/rollback", json={"version": 5})
    assert r.status_code == 200 and r.json()["versions"] == {"K": 13} and r.json()["persisted"]
    assert env.folder("w1") == {"K": b"value-5"}
    listed = env.client.get("/cp/admin/workspaces/w1/env/K/versions").json()["versions"]
    assert listed[0]["action"] == "rollback" and listed[0]["current"] and "value-" not in str(listed)
    assert env.client.post("/cp/admin/workspaces/w1/env/K/rollback", json={"version": 1}).status_code == 404
    assert env.client.post("/cp/admin/workspaces/w1/env/K/rollback", json={"version": 0}).status_code == 400
    assert env.client.post("/cp/admin/workspaces/w1/env/K/rollback", json={"version": "3"}).status_code == 400
    assert env.client.post("/cp/admin/workspaces/w1/env/NOPE/rollback", json={"version": 1}).status_code == 404
    assert env.client.get("/cp/admin/workspaces/w1/env/NOPE/versions").status_code == 404


def test_expected_versions(env: Env) -> None:
    assert env.push("w1", {"A": "1"}, body={"expected_versions": {"A": 0}}).status_code == 200
    r = env.push("w1", {"A": "2", "B": "x"}, body={"expected_versions": {"A": 7, "B": 0}})
    assert r.status_code == 409 and r.json()["key"] == "A" and "expected version 7, stored 1" in r.text
    assert env.folder("w1") == {"A": b"1"}
    assert env.push("w1", {"A": "2"}, body={"expected_versions": {"A": 1}}).status_code == 200


def test_global_inheritance_override_and_delete(env: Env) -> None:
    env.create("w2")
    env.push("w2", {"SHARED": "mine"})
    r = env.push(None, {"SHARED": "global", "ONLY_G": "g"})
    assert r.status_code == 200 and r.json()["workspace_id"] is None and r.json()["persisted"]
    assert env.folder("w1") == {"SHARED": b"global", "ONLY_G": b"g"}
    assert env.folder("w2") == {"SHARED": b"mine", "ONLY_G": b"g"}  # the workspace wins
    env.create("w3")  # a new workspace inherits at provision
    assert env.folder("w3") == {"SHARED": b"global", "ONLY_G": b"g"}
    # Deleting the override uncovers the global value.
    assert env.client.delete("/cp/admin/workspaces/w2/env/SHARED").status_code == 200
    assert env.folder("w2")["SHARED"] == b"global"
    assert env.client.delete("/cp/admin/env/SHARED").status_code == 200
    for ws in ("w1", "w2", "w3"):
        assert env.folder(ws) == {"ONLY_G": b"g"}
    assert env.client.delete("/cp/admin/env/SHARED").status_code == 404
    assert env.client.post("/cp/admin/env/ONLY_G/rollback", json={"version": 1}).json()["versions"] == {"ONLY_G": 2}
    assert versions(env, None, "ONLY_G") == [2, 1]


def test_idempotency(env: Env) -> None:
    h = {"Idempotency-Key": "abc-123"}
    first = env.push("w1", {"A": "1"}, headers=h)
    again = env.push("w1", {"A": "1"}, headers=h)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    assert versions(env, "w1", "A") == [1]
    r = env.push("w1", {"A": "2"}, headers=h)
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["error"]
    assert env.folder("w1") == {"A": b"1"}
    # The same key on another workspace is another request.
    env.create("w2")
    assert env.push("w2", {"A": "1"}, headers=h).json()["versions"] == {"A": 1}
    g1 = env.push(None, {"G": "1"}, headers={"Idempotency-Key": "g"})
    g2 = env.push(None, {"G": "1"}, headers={"Idempotency-Key": "g"})
    assert g1.json() == g2.json() and versions(env, None, "G") == [1]


def test_audit(env: Env) -> None:
    env.push("w1", {"A": "audit-value"})
    env.client.delete("/cp/admin/workspaces/w1/env/A")
    r = env.client.get("/cp/admin/audit", params={"workspace": "w1", "key": "A"})
    events = r.json()["events"]
    assert [e["action"] for e in events] == ["delete", "set"]
    assert events[1]["sha256_8"] == hashlib.sha256(b"audit-value").hexdigest()[:8]
    assert events[1]["actor"].startswith("admin:") and events[1]["version"] == 1
    assert "audit-value" not in r.text
    all_events = env.client.get("/cp/admin/audit", params={"limit": 1}).json()["events"]
    assert len(all_events) == 1
    older = env.client.get("/cp/admin/audit", params={"before": all_events[0]["id"]}).json()["events"]
    assert all(e["id"] < all_events[0]["id"] for e in older) and older
    assert any(e["action"] == "workspace.create" for e in older)


@pytest.mark.parametrize("bad", [{"id": "ok", "env": {"1X": "v"}}, {"id": "ok", "env": {"A": "a\u0000"}},
                                 {"id": "ok", "env": {"A": 1}}, {"id": "ok", "template": 5}, {"id": 3}, {}])
def test_bad_workspace_bodies(env: Env, bad: dict) -> None:
    r = env.client.post("/cp/admin/workspaces", json=bad)
    assert r.status_code == 400, r.text
    assert env.client.get("/cp/admin/workspaces/ok").status_code == 404


def test_workspace_crud(env: Env) -> None:
    r = env.client.post("/cp/admin/workspaces", json={"id": "w2", "template": "tpl", "env": {"SNAP_TOKEN": "snapval"}})
    assert r.status_code == 201 and r.json()["env_names"] == ["SNAP_TOKEN"] and "snapval" not in r.text
    assert r.json()["materialised"] is True
    assert env.client.post("/cp/admin/workspaces", json={"id": "w2"}).status_code == 409
    ids = [w["id"] for w in env.client.get("/cp/admin/workspaces").json()["workspaces"]]
    assert ids == ["w1", "w2"]
    got = env.client.get("/cp/admin/workspaces/w2").json()
    assert got["template"] == "tpl" and got["pending"] == [] and "snapval" not in str(got)
    env.push("w2", {"A": "x"})
    assert env.client.delete("/cp/admin/workspaces/w2").status_code == 200
    assert not (env.data / "workspaces/w2").exists()
    assert env.client.get("/cp/admin/workspaces/w2").status_code == 404
    assert env.client.delete("/cp/admin/workspaces/w2").status_code == 404
    # Recreated: nothing left over.
    env.create("w2")
    assert env.folder("w2") == {} and env.client.get("/cp/admin/workspaces/w2/env").json()["secrets"] == []


def test_routes_are_not_rebuilt_per_request(env) -> None:
    """FastAPI builds an included router's effective routes once (per routes version), not per request:
    a rebuild costs a pydantic TypeAdapter per parameter. Guards the hot path against a regression."""
    import pytest

    routing = pytest.importorskip("fastapi.routing")
    ctx = getattr(routing, "_EffectiveRouteContext", None)
    if ctx is None:
        pytest.skip("this FastAPI has no _EffectiveRouteContext")
    env.push("w1", {"A": "0"})  # the first request builds them
    calls = {"n": 0}
    original = ctx.from_api_route.__func__

    def counting(cls, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return original(cls, **kw)

    ctx.from_api_route = classmethod(counting)
    try:
        for i in range(5):
            assert env.push("w1", {"A": str(i)}).status_code == 200
            assert env.client.get("/cp/admin/workspaces/w1/env").status_code == 200
    finally:
        ctx.from_api_route = classmethod(original)
    assert calls["n"] == 0


def test_the_budget_counts_the_create_time_environment(make_env) -> None:
    """Snapshot + secrets are one process environment: together past the budget, every exec fails (E2BIG)."""
    env = make_env()
    big = "s" * 100_000
    snapshot = {f"SNAP{i}": big for i in range(6)}  # ~600 KB of the 1 MiB budget
    r = env.client.post("/cp/admin/workspaces", json={"id": "w1", "env": snapshot})
    assert r.status_code == 201, r.text
    r = env.push("w1", {f"S{i}": big for i in range(5)})  # ~500 KB: fits alone, not beside the snapshot
    assert r.status_code == 413 and "create-time environment" in r.json()["error"], r.text
    assert env.push("w1", {"S0": big}).status_code == 200  # what does fit still goes in
    r = env.push(None, {f"G{i}": big for i in range(4)})  # a global push reaches w1 too
    assert r.status_code == 413 and "workspace w1" in r.json()["error"], r.text
    assert env.push(None, {"G0": big}).status_code == 200
    # A new workspace whose snapshot cannot fit beside today's globals is refused up front.
    r = env.client.post("/cp/admin/workspaces", json={"id": "w2", "env": {f"X{i}": big for i in range(10)}})
    assert r.status_code == 413 and "create-time environment" in r.json()["error"], r.text
    assert env.client.get("/cp/admin/workspaces/w2").status_code == 404
    # One variable over the kernel's limit for one string (128 KiB): 413 naming it, nothing created.
    r = env.client.post("/cp/admin/workspaces", json={"id": "w3", "env": {"OK": "x", "HUGE": "h" * 140_000}})
    assert r.status_code == 413 and r.json()["key"] == "HUGE" and "too large" in r.text, r.text
    r = env.client.post("/cp/admin/workspaces", json={"id": "w3", "env": {"1BAD": "x", "HUGE": "h" * 140_000}})
    assert r.status_code == 400 and {p["key"] for p in r.json()["problems"]} == {"1BAD", "HUGE"}, r.text
    assert env.client.get("/cp/admin/workspaces/w3").status_code == 404
