"""Auth on every route, and a clear 4xx for every client mistake (never a 500)."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from .conftest import Env, auth

ROUTES = [
    ("GET", "/cp/admin/workspaces"),
    ("POST", "/cp/admin/workspaces"),
    ("GET", "/cp/admin/workspaces/w1"),
    ("DELETE", "/cp/admin/workspaces/w1"),
    ("POST", "/cp/admin/workspaces/w1/restart"),
    ("POST", "/cp/admin/workspaces/w1/start"),
    ("POST", "/cp/admin/workspaces/w1/stop"),
    ("POST", "/cp/admin/workspaces/w1/env"),
    ("GET", "/cp/admin/workspaces/w1/env"),
    ("DELETE", "/cp/admin/workspaces/w1/env/A"),
    ("GET", "/cp/admin/workspaces/w1/env/A/versions"),
    ("POST", "/cp/admin/workspaces/w1/env/A/rollback"),
    ("POST", "/cp/admin/env"),
    ("GET", "/cp/admin/env"),
    ("DELETE", "/cp/admin/env/A"),
    ("GET", "/cp/admin/env/A/versions"),
    ("POST", "/cp/admin/env/A/rollback"),
    ("GET", "/cp/admin/audit"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/no/such/route"),
]


def test_routes_list_matches_the_app(env: Env) -> None:
    spec = env.client.get("/openapi.json").json()
    documented = {(m.upper(), p.replace("{workspace_id}", "w1").replace("{name}", "A"))
                  for p, ops in spec["paths"].items() for m in ops}
    assert documented - {("GET", "/healthz")} == set(ROUTES[:-2])


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_the_token(env: Env, method: str, path: str) -> None:
    raw = TestClient(env.app)
    r = raw.request(method, path, json={"env": {"A": "x"}})
    assert r.status_code == 401 and r.json() == {"error": "missing bearer token"}
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = raw.request(method, path, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    r = raw.request(method, path, headers=auth("wrong"), content=b"{not json")
    assert r.status_code == 403 and r.json() == {"error": "invalid token"}
    r = raw.request(method, path, headers={"Authorization": b"Bearer \xe9\xff"})
    assert r.status_code == 403


def test_healthz_is_public(env: Env) -> None:
    r = TestClient(env.app).get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_not_found_and_method_not_allowed(env: Env) -> None:
    assert env.client.get("/nope").status_code == 404
    r = env.client.put("/cp/admin/env")
    assert r.status_code == 405 and "error" in r.json()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "malformed JSON"),
        (b'{"env": {"A": "\xff\xfe"}}', "malformed JSON"),  # not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),  # nested too deep
        (b"", "missing JSON body"),
        (b"[]", "invalid request"),
        (b'"env"', "invalid request"),
        (b'{"env": []}', "env"),
        (b'{"env": {"A": 1}}', "env.A"),
        (b'{"env": {"A": null}}', "env.A"),
        (b'{"env": {"A": "x"}, "restart": "yes"}', "restart"),
        (b'{"env": {"A": "x"}, "restart_mode": "reboot"}', "restart_mode"),
        (b'{"env": {"A": "x"}, "expected_versions": {"A": -1}}', "expected_versions"),
        (b'{"env": {"A": "x"}, "expected_versions": {"A": 99999999999999999999}}', "expected_versions"),
        (b'{"env": {"A": "x"}, "surprise": 1}', "surprise"),
        (b'{"env": {}}', "empty"),
        (b'{"key": "A"}', "both"),
        (b'{"value": "x"}', "both"),
        (b'{"key": "A", "value": "x", "env": {"B": "y"}}', "not both"),
        (b'{"key": 5, "value": "x"}', "key"),
    ],
)
def test_malformed_push_bodies_are_400(env: Env, body: bytes, fragment: str) -> None:
    r = env.client.post("/cp/admin/workspaces/w1/env", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"] or fragment in json.dumps(r.json())
    assert env.folder("w1") == {}


@pytest.mark.parametrize("ws", [".x", "-x", "a" * 129, "a b", "a%2Fb", "%2e%2e", "x\u00e9"])
def test_bad_workspace_ids_never_reach_the_filesystem(env: Env, ws: str) -> None:
    before = sorted(p.name for p in (env.data / "workspaces").iterdir())
    r = env.client.post(f"/cp/admin/workspaces/{ws}/env", json={"key": "A", "value": "x"})
    assert r.status_code in (400, 404), r.text
    r = env.client.post("/cp/admin/workspaces", json={"id": ws})
    assert r.status_code == 400
    assert sorted(p.name for p in (env.data / "workspaces").iterdir()) == before


def test_body_over_limit_is_413(env: Env) -> None:
    big = b'{"env": {"A": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    r = env.client.post("/cp/admin/workspaces/w1/env", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]

    def chunks():  # no Content-Length: counted while streaming
        yield b'{"env": {"A": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}}'

    r = env.client.post("/cp/admin/workspaces/w1/env", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert env.folder("w1") == {}


def test_bad_content_length_is_400(env: Env) -> None:
    r = env.client.post("/cp/admin/workspaces/w1/env", content=b"{}",
                        headers={"content-type": "application/json", "content-length": "zz"})
    assert r.status_code == 400


def test_bad_query_parameters_are_400(env: Env) -> None:
    for q in ("limit=0", "limit=abc", "limit=100000", "before=-1", "workspace=../x", "workspace=a%2Fb"):
        assert env.client.get(f"/cp/admin/audit?{q}").status_code == 400, q
    r = env.client.get("/cp/admin/audit?workspace=..")
    assert r.status_code == 400 and "invalid workspace id" in r.json()["error"]


@pytest.mark.parametrize("route", ["start", "stop"])
def test_routes_without_parameters_refuse_a_body_with_fields(env: Env, route: str) -> None:
    """As restart does: an unknown field is a client mistake, not something to ignore."""
    r = env.client.post(f"/cp/admin/workspaces/w1/{route}", json={"mode": "restart"})
    assert r.status_code == 400 and "mode" in r.json()["error"], r.text


def test_bad_idempotency_key_header_is_400(env: Env) -> None:
    r = env.client.post("/cp/admin/workspaces/w1/env", json={"key": "A", "value": "x"},
                        headers={"Idempotency-Key": "k" * 300})
    assert r.status_code == 400 and "idempotency" in r.text.lower()


@pytest.mark.parametrize("ctype", [None, "application/x-www-form-urlencoded", "text/plain", "application/json; charset=utf-8"])
def test_json_body_whatever_curl_declares(env, ctype) -> None:
    """`curl -d '{...}'` sends form-urlencoded: the JSON-only API reads it as JSON."""
    headers = {"content-type": ctype} if ctype else {}
    r = env.client.post("/cp/admin/workspaces/w1/env", content=b'{"env": {"CT_TEST": "v"}}', headers=headers)
    assert r.status_code == 200, r.text
    assert env.folder("w1")["CT_TEST"] == b"v"


def test_other_content_types_are_a_clear_400(env) -> None:
    r = env.client.post("/cp/admin/workspaces/w1/env", content=b"--x--", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "error" in r.json()


def test_wrong_encryption_key_is_a_clear_503(env) -> None:
    from secretsd.store.crypto import new_key, read_key_file, write_key_file

    assert env.push("w1", {"A": "one"}).status_code == 200
    assert env.push("w1", {"A": "two"}).status_code == 200
    key_file = env.data / "encryption.key"
    write_key_file(key_file, {v: new_key() for v in read_key_file(key_file)})  # same versions, other keys
    r = env.client.post("/cp/admin/workspaces/w1/env/A/rollback", json={"version": 1})
    assert r.status_code == 503, r.text
    assert "wrong encryption key" in r.json()["error"] and "one" not in r.text


def test_expected_versions_for_a_key_not_in_the_push_is_400(env: Env) -> None:
    r = env.push("w1", {"A": "x"}, body={"expected_versions": {"B": 1}})
    assert r.status_code == 400 and "B" in r.json()["error"], r.text
    assert env.folder("w1") == {}
