"""The push route's short lane (routes_env._PushRoute): a plain valid push skips FastAPI's
dependency solving; every other request, and every error, takes the full handler. Each
request here is sent once through the lane and once with the lane closed: same answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from secretsd.controlplane import routes_env

from .conftest import Env

BIG = "x" * 140_000
#: (name, body (JSON-able, or raw bytes), extra headers, lane expected)
CASES: list[tuple[str, Any, dict[str, str], bool]] = [
    ("plain", {"env": {"A": "1", "B": "multi\nline\n"}}, {}, True),
    ("single form", {"key": "A", "value": "v"}, {}, True),
    ("expected ok", {"env": {"A": "1"}, "expected_versions": {"A": 0}}, {}, True),
    ("expected conflict", {"env": {"A": "1"}, "expected_versions": {"A": 7}}, {}, True),
    ("expected for a key not pushed", {"env": {"A": "1"}, "expected_versions": {"B": 0}}, {}, False),
    ("reserved name", {"env": {"PATH": "/x", "ok": "1"}}, {}, True),
    ("bad name", {"env": {"1BAD": "x"}}, {}, True),
    ("NUL", {"env": {"A": "a\u0000b"}}, {}, True),
    ("lone surrogate", {"env": {"A": "\ud800"}}, {}, True),
    ("too large", {"env": {"A": BIG}}, {}, True),
    ("restart without runtime", {"env": {"A": "1"}, "restart": True}, {}, True),
    ("empty env", {"env": {}}, {}, None),
    ("unknown field", {"env": {"A": "1"}, "nope": 1}, {}, False),
    ("value not a string", {"env": {"A": 1}}, {}, False),
    ("env and key", {"env": {"A": "1"}, "key": "B", "value": "2"}, {}, None),
    ("not an object", [1, 2], {}, False),
    ("malformed JSON", b"{\"env\": ", {}, False),
    ("not UTF-8", b"{\"env\": {\"A\": \"\xff\"}}", {}, False),
    ("text/plain (read as JSON, as curl -d sends)", {"env": {"A": "1"}}, {"Content-Type": "text/plain"}, True),
    ("charset", {"env": {"A": "1"}}, {"Content-Type": "application/json; charset=utf-8"}, True),
    ("another type", {"env": {"A": "1"}}, {"Content-Type": "application/xml"}, False),
    ("idempotent", {"env": {"A": "1"}}, {"Idempotency-Key": "k-1"}, False),
    ("bad idempotency key", {"env": {"A": "1"}}, {"Idempotency-Key": "a b"}, False),
]


def _send(env: Env, ws: str, body: Any, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **headers}
    return env.client.post(f"/cp/admin/workspaces/{ws}/env", content=data, headers=h)


def _normal(text: str, ws: str) -> Any:
    return json.loads(re.sub(re.escape(ws), "WS", text))


@pytest.mark.parametrize(("name", "body", "headers", "lane"), CASES, ids=[c[0] for c in CASES])
def test_the_lane_answers_as_the_full_handler(make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch,
                                              name: str, body: Any, headers: dict[str, str], lane: bool | None) -> None:
    env = make_env()
    taken: list[bool] = []
    real = routes_env._plain_push

    async def spy(request):  # type: ignore[no-untyped-def]
        got = await real(request)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(routes_env, "_plain_push", spy)
    env.create("via-lane")
    env.create("via-full")
    a = _send(env, "via-lane", body, headers)
    assert lane is None or taken == [lane], taken
    monkeypatch.setattr(routes_env, "_plain_push", lambda request: _none())
    b = _send(env, "via-full", body, headers)
    assert a.status_code == b.status_code, (a.text, b.text)
    assert _normal(a.text, "via-lane") == _normal(b.text, "via-full")
    assert env.folder("via-lane") == env.folder("via-full")
    assert BIG not in a.text and "multi\nline" not in a.text


async def _none() -> None:
    return None


@pytest.mark.parametrize("ws", [".hidden", "a" * 129, "%2e%2e", "-x", "a%2Fb"])
def test_a_bad_workspace_id_never_takes_the_lane(make_env: Callable[..., Env], ws: str) -> None:
    env = make_env()
    r = env.client.post(f"/cp/admin/workspaces/{ws}/env", json={"env": {"A": "1"}})
    assert r.status_code in (400, 404) and "error" in r.json(), r.text
    assert not (env.data / "workspaces" / ws).exists()
