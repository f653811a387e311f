"""Against a real uvicorn on loopback: the canary rule, 50 concurrent clients, serve's token handling."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import uuid
from pathlib import Path

import httpx

from .conftest import Server, folder, start_server, stop_server


def _break_host(data: Path, ws: str):
    configs = data / "workspaces" / ws / "configs"
    moved = configs.with_name("configs.real")
    configs.rename(moved)
    os.symlink(moved, configs)
    return lambda: (configs.unlink(), moved.rename(configs))


def exercise_with_canary(s: Server, canary: str) -> list[str]:
    """Push the canary through every route and mistake; return every response (status, headers, body)."""
    seen: list[str] = []
    with s.client() as c:
        def call(method: str, url: str, **kw):
            r = c.request(method, url, **kw)
            assert r.status_code < 500 or r.status_code in (501, 502, 503), (url, r.status_code, r.text)
            seen.append(f"{r.status_code} {dict(r.headers)} {r.text}")
            return r

        call("POST", "/cp/admin/workspaces", json={"id": "w1", "env": {"SNAP": canary}})
        call("POST", "/cp/admin/workspaces", json={"id": "w2"})
        call("POST", "/cp/admin/workspaces", json={"id": "bad", "env": {"1X": canary, "NUL": canary + "\0"}})
        assert call("POST", "/cp/admin/workspaces/w1/env", json={"env": {"A": canary, "ML": canary + "\nx\n"}}).status_code == 200
        call("POST", "/cp/admin/workspaces/w1/env", json={"key": "A", "value": canary + "2"},
             headers={"Idempotency-Key": "k1"})
        call("POST", "/cp/admin/workspaces/w1/env", json={"key": "A", "value": canary + "2"},
             headers={"Idempotency-Key": "k1"})
        call("POST", "/cp/admin/workspaces/w1/env", json={"key": "A", "value": canary + "3"},
             headers={"Idempotency-Key": "k1"})
        for body in (
            {"env": {"PATH": canary, "1BAD": canary, "OK": canary}},
            {"env": {"NUL": canary + "\0"}},
            {"env": {"BIG": canary * 5000}},
            {"env": {"A": [canary]}},
            {"env": {"A": canary}, "restart": canary},
            {"env": {"A": canary}, "expected_versions": {"A": 99}},
            {"env": {"A": canary}, "surprise": canary},
            {"key": "A", "value": canary, "env": {"B": canary}},
        ):
            call("POST", "/cp/admin/workspaces/w1/env", json=body)
        call("POST", "/cp/admin/workspaces/w1/env", content=b'{"env": {"A": "' + canary.encode() + b'"',
             headers={"content-type": "application/json"})
        call("POST", "/cp/admin/workspaces/w1/env", content=('{"env": {"A": "' + canary + '\\ud800"}}').encode(),
             headers={"content-type": "application/json"})
        call("POST", "/cp/admin/env", json={"env": {"G": canary}})
        call("POST", "/cp/admin/workspaces/w1/env", json={"env": {"A": canary}, "restart": True})
        fix = _break_host(s.data, "w2")
        r = call("POST", "/cp/admin/workspaces/w2/env", json={"env": {"W2": canary}})
        assert r.status_code == 502
        fix()
        call("POST", "/cp/admin/workspaces/w1/env/A/rollback", json={"version": 1})
        for url in ("/cp/admin/workspaces/w1/env", "/cp/admin/env", "/cp/admin/workspaces/w1/env/A/versions",
                    "/cp/admin/workspaces", "/cp/admin/workspaces/w1", "/cp/admin/audit?limit=1000", "/metrics",
                    "/openapi.json", "/healthz"):
            call("GET", url)
        call("DELETE", "/cp/admin/workspaces/w1/env/ML")
        call("DELETE", "/cp/admin/env/G")
        call("POST", "/cp/admin/workspaces/w1/restart")
        call("DELETE", "/cp/admin/workspaces/w2")
    return seen


def test_canary_never_leaks_sqlite(tmp_path: Path) -> None:
    canary = "CANARY" + uuid.uuid4().hex
    s = start_server(tmp_path / "data")
    try:
        assert (s.data / "admin.token").stat().st_mode & 0o777 == 0o600
        responses = exercise_with_canary(s, canary)
        assert folder(s.data, "w1")["A"] == canary.encode()  # positive control: it did reach the folder
    finally:
        stop_server(s)
    log = s.log.read_text()
    assert "admin.token" in log and s.token not in log  # says where the token is, never the token
    assert "POST /cp/admin/workspaces/w1/env" in log  # the access log was captured
    hits = [r for r in responses if canary in r]
    assert not hits, hits[:3]
    assert canary not in log
    db = s.data / "secretsd.db"
    con = sqlite3.connect(db)
    audit = con.execute("SELECT * FROM audit").fetchall()
    assert len(audit) > 5 and canary not in repr(audit)
    assert canary not in repr(con.execute("SELECT * FROM idempotency").fetchall())
    con.close()
    for f in s.data.iterdir():
        if f.is_file():
            assert canary.encode() not in f.read_bytes(), f
    sha8 = hashlib.sha256(canary.encode()).hexdigest()[:8]
    assert sha8 in repr(audit)


def test_canary_never_leaks_postgres(tmp_path: Path, pg_url: str, pg_cluster) -> None:
    canary = "CANARY" + uuid.uuid4().hex
    s = start_server(tmp_path / "data", db_url=pg_url, extra_env={"SECRETSD_ADMIN_TOKEN": "pg-" + uuid.uuid4().hex})
    try:
        responses = exercise_with_canary(s, canary)
    finally:
        stop_server(s)
    assert not [r for r in responses if canary in r]
    assert canary not in s.log.read_text() and s.token not in s.log.read_text()
    hits = []
    for f in pg_cluster.root.rglob("*"):
        if f.is_file() and canary.encode() in f.read_bytes():
            hits.append(f)
    assert not hits
    assert not (s.data / "secretsd.db").exists()


def concurrent_pushes(s: Server, n: int = 50) -> None:
    with s.client() as c:
        assert c.post("/cp/admin/workspaces", json={"id": "hot"}).status_code == 201
    results: dict[str, tuple[int, dict]] = {}
    barrier = threading.Barrier(n)

    def client(i: int) -> None:
        value = f"value-{i}-{uuid.uuid4().hex}"
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.token}"}, timeout=60) as c:
            barrier.wait()
            r = c.post("/cp/admin/workspaces/hot/env", json={"env": {"HOT": value, f"OWN_{i}": "x"}})
            results[value] = (r.status_code, r.json())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(code for code, _ in results.values()) == [200] * n, results
    by_version = {body["versions"]["HOT"]: value for value, (_, body) in results.items()}
    assert sorted(by_version) == list(range(1, n + 1))  # no lost or duplicated version
    final = folder(s.data, "hot")
    assert final["HOT"] == by_version[n].encode()  # the folder holds the last committed version
    assert sorted(k for k in final if k.startswith("OWN_")) == sorted(f"OWN_{i}" for i in range(n))
    with s.client() as c:
        vs = c.get("/cp/admin/workspaces/hot/env/HOT/versions").json()["versions"]
        assert vs[0]["version"] == n and vs[0]["current"]
        assert 'status="5' not in c.get("/metrics").text


def test_50_concurrent_clients_sqlite(tmp_path: Path) -> None:
    s = start_server(tmp_path / "data")
    try:
        concurrent_pushes(s)
    finally:
        stop_server(s)


def test_50_concurrent_clients_postgres(tmp_path: Path, pg_url: str) -> None:
    s = start_server(tmp_path / "data", db_url=pg_url)
    try:
        concurrent_pushes(s)
    finally:
        stop_server(s)


def test_serve_uses_env_token_and_restarts_on_same_data(tmp_path: Path) -> None:
    token = "env-" + uuid.uuid4().hex
    s = start_server(tmp_path / "data", extra_env={"SECRETSD_ADMIN_TOKEN": token})
    try:
        assert not (s.data / "admin.token").exists()
        with s.client() as c:
            c.post("/cp/admin/workspaces", json={"id": "w"})
            c.post("/cp/admin/workspaces/w/env", json={"key": "K", "value": "v"})
    finally:
        stop_server(s)
    assert (s.data / "encryption.key").stat().st_mode & 0o777 == 0o600
    s2 = start_server(tmp_path / "data", extra_env={"SECRETSD_ADMIN_TOKEN": token}, args=["--demo"])
    try:
        with s2.client() as c:
            names = [x["name"] for x in c.get("/cp/admin/workspaces/w/env").json()["secrets"]]
            assert names == ["K"]
            assert httpx.get(s2.url + "/cp/admin/workspaces", headers={"Authorization": "Bearer no"}).status_code == 403
    finally:
        stop_server(s2)
    assert "--demo: no workspace runtime" in s2.log.read_text()
    assert "shorter than" not in s2.log.read_text()  # 36 characters


def test_serve_warns_about_a_short_env_token_without_printing_it(tmp_path: Path) -> None:
    token = "cAnArY-short"
    s = start_server(tmp_path / "data", extra_env={"SECRETSD_ADMIN_TOKEN": token})
    try:
        with s.client() as c:
            assert c.get("/cp/admin/workspaces").status_code == 200  # a warning, not a refusal
    finally:
        stop_server(s)
    log = s.log.read_text()
    assert "$SECRETSD_ADMIN_TOKEN is shorter than 32 characters" in log and token not in log


def test_group_commit_refuses_only_the_bad_pushes(server: Server) -> None:
    with server.client() as c:
        assert c.post("/cp/admin/workspaces", json={"id": "g"}).status_code == 201
    n = 24
    barrier = threading.Barrier(n)
    out: dict[int, tuple[int, dict]] = {}

    def client(i: int) -> None:
        body: dict = {"env": {"K": f"v{i}"}}
        if i % 4 == 0:
            body["expected_versions"] = {"K": 10_000}  # always stale: must be refused alone
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=60) as c:
            barrier.wait()
            r = c.post("/cp/admin/workspaces/g/env", json=body)
            out[i] = (r.status_code, r.json())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i for i, (code, _) in out.items() if code == 409} == {i for i in range(n) if i % 4 == 0}
    ok = {body["versions"]["K"]: i for i, (code, body) in out.items() if code == 200}
    assert sorted(ok) == list(range(1, n - n // 4 + 1))
    assert folder(server.data, "g") == {"K": f"v{ok[max(ok)]}".encode()}


def test_fastapi_opentelemetry_is_off_unless_asked_for(tmp_path) -> None:
    """FastAPI's own OpenTelemetry layer costs CPU on every request even with no provider: off by
    default, on with ``serve --otel`` (AppConfig.otel)."""
    from secretsd.controlplane.app import AppConfig, create_app

    off = create_app(AppConfig(data_dir=tmp_path / "a", admin_token="t" * 40))
    on = create_app(AppConfig(data_dir=tmp_path / "b", admin_token="t" * 40, otel=True))
    assert not any(off._telemetry[k] for k in ("tracing", "metrics", "logs"))  # type: ignore[attr-defined]
    assert all(on._telemetry[k] for k in ("tracing", "metrics", "logs"))  # type: ignore[attr-defined]
    # With telemetry, pushes take FastAPI's full handler (its dependency and endpoint spans).
    assert off.state.full_handlers is False and on.state.full_handlers is True
