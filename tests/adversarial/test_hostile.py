"""Hostile input: fuzzed names and values (API and CLI), invalid UTF-8 and lone surrogates, path
traversal in ids and names, and link / folder-swap attacks on the host folder while the API writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretsd.format.rules import FormatError, Rules, encode_value

from .conftest import App
from .helpers import folder, make_server, record, snapshot_tree, store_values

RULES = Rules()
JSON = {"content-type": "application/json"}

names = st.one_of(
    st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,30}\Z"),
    st.sampled_from(["PATH", "LD_PRELOAD", "SECRETSD_DIR", "IFS", "..", ".", "../x", "a/b", "load.sh", ".hidden",
                     "A\0B", "É", "A-B", "1A", "", " ", "A" * 256, "_" * 255, "..data", "..gen-00000001", "A\n"]),
    st.text(min_size=0, max_size=40),
)
values = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.sampled_from(["", "\0", "a\0b", "\ud800", "x\udfff", "\r\n", "-n", "$(id)", "`id`", "\\", "'\"", "\n" * 5,
                     "x" * 131000, "é" * 70000]),
)


def _expect_ok(name: str, value: str) -> bool:
    try:
        RULES.check_name(name)
        RULES.check_value(name, encode_value(name, value))
        return True
    except (FormatError, UnicodeError):
        return False


def test_fuzz_names_and_values_through_the_api(inproc: App) -> None:
    c = inproc.client
    assert c.post("/cp/admin/workspaces", json={"id": "fz"}).status_code == 201
    before_outside = sorted(p.name for p in inproc.data.iterdir())
    stats = {"examples": 0, "accepted": 0, "refused": 0}

    @settings(max_examples=int(os.environ.get("SECRETSD_API_FUZZ", "200")), deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(name=names, value=values)
    def one(name: str, value: str) -> None:
        body = json.dumps({"env": {name: value}}, ensure_ascii=True)  # lone surrogates travel as \\udXXX escapes
        r = c.post("/cp/admin/workspaces/fz/env", content=body, headers=JSON)
        stats["examples"] += 1
        assert r.status_code in (200, 400, 413), (name[:40], r.status_code, r.text[:300])
        ok = _expect_ok(name, value)
        assert (r.status_code == 200) == ok, (name[:40], len(value), r.status_code, r.text[:300])
        if ok:
            stats["accepted"] += 1
            assert folder(inproc.data, "fz")[name] == value.encode()
            c.delete(f"/cp/admin/workspaces/fz/env/{name}")  # keep the folder under its budget
        else:
            stats["refused"] += 1
            assert value[:20] not in r.text or len(value) < 8 or value[:20] in name  # names are echoed

    one()
    assert sorted(p.name for p in inproc.data.iterdir()) == before_outside
    ws = inproc.data / "workspaces"
    assert sorted(p.name for p in ws.iterdir()) == ["fz"]
    record("fuzz_api", **stats)


def test_fuzz_names_and_values_through_the_cli(tmp_path: Path) -> None:
    d = tmp_path / "secrets.d"
    stats = {"examples": 0, "accepted": 0, "refused": 0}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}

    cli_names = st.one_of(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z"),
                          st.sampled_from(["PATH", "..", "../x", "a/b", "load.sh", "-x", "--dir", "A-B", "1A", "A" * 256]),
                          st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
                                  min_size=1, max_size=20))
    cli_values = st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"a\0b", b"\xff\xfe", b"\n\n", b"x" * 140000]))

    @settings(max_examples=int(os.environ.get("SECRETSD_CLI_FUZZ", "25")), deadline=None,
              suppress_health_check=list(HealthCheck), database=None)
    @given(name=cli_names, value=cli_values)
    def one(name: str, value: bytes) -> None:
        p = subprocess.run([sys.executable, "-m", "secretsd.cli", "set", "--dir", str(d), "--", name, "-"],
                           input=value, capture_output=True, env=env, timeout=60)
        stats["examples"] += 1
        try:
            RULES.check(name, value)
            ok = True
        except FormatError:
            ok = False
        assert b"Traceback" not in p.stderr, p.stderr[-400:]
        assert p.returncode == (0 if ok else 2), (name, value[:40], p.returncode, p.stderr[-300:])
        if ok:
            stats["accepted"] += 1
            g = subprocess.run([sys.executable, "-m", "secretsd.cli", "get", "--dir", str(d), "--", name],
                               capture_output=True, env=env, timeout=60)
            assert g.stdout == value
        else:
            stats["refused"] += 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["secrets.d"] or not d.exists()

    one()
    record("fuzz_cli", **stats)


BODY_ROUTES = [
    "/cp/admin/workspaces", "/cp/admin/workspaces/w/env", "/cp/admin/env", "/cp/admin/workspaces/w/env/A/rollback",
    "/cp/admin/env/A/rollback", "/cp/admin/workspaces/w/restart",
]
BAD_BODIES = [
    b'{"env": {"A": "\xff"}}', b'{"env": {"A": "\xc0\xaf"}}', b'{"env": {"A": "\xed\xa0\x80"}}',  # raw bytes
    b'{"env": {"\xff": "x"}}', b'{"id": "\xff"}',  # (a UTF-8 BOM is accepted: RFC 8259 allows it)
    b'{"env": {"A": "\\ud800"}}', b'{"env": {"A": "x\\udfff"}}', b'{"env": {"\\ud800": "x"}}',
    b'{"key": "A", "value": "\\udbff\\udfff\\ud800"}', b'{"id": "\\ud800"}', b'{"version": "\\ud800"}',
    b'{"env": {"A": "x"}, "restart_mode": "\\ud800"}', b'\x00', b'{"env": {"A": "x"}}\x00', b"[" * 100000,
    b'{"env": ' * 5000, b'{"env": {"A": 1e999999}}', b'{"version": 1e400}', b'{"version": 99999999999999999999999}',
]


def test_invalid_utf8_and_lone_surrogates_on_every_body_route(inproc: App) -> None:
    c = inproc.client
    assert c.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
    assert c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "ok"}}).status_code == 200
    assert c.post("/cp/admin/env", json={"env": {"A": "g"}}).status_code == 200
    codes: dict[int, int] = {}
    for route in BODY_ROUTES:
        for body in BAD_BODIES:
            r = c.post(route, content=body, headers=JSON)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            assert 400 <= r.status_code < 500, (route, body[:60], r.status_code, r.text[:200])
            r.json()  # always a JSON error body
    assert folder(inproc.data, "w") == {"A": b"ok"}
    record("invalid_utf8_surrogates", requests=len(BODY_ROUTES) * len(BAD_BODIES), status_counts=codes)


EVIL_IDS = ["..", ".", "%2e%2e", "%2E%2E", ".%2e", "%2e%2e%2f%2e%2e", "a%2fb", "a%2F..%2Fb", "..%2f..%2fetc",
            "%00", "a%00b", "x" * 129, "x" * 5000, "-x", ".hidden", "_x", "%c3%a9", "a%20b", "a%0ab", "a;b", "a%5cb",
            "%252e%252e", "workspaces", "con", "a..b"]
EVIL_NAMES = ["..", "%2e%2e", "..%2f..%2fx", "a%2fb", "%00", "A%00B", "A" * 256, "A" * 5000, "load.sh",
              "..data", "..gen-00000001", "PATH", "1A", "%c3%a9", "A%0A"]


def test_path_traversal_in_ids_and_names_never_reaches_the_filesystem(tmp_path: Path) -> None:
    """Raw paths over http.client (httpx would normalise the dot segments away before sending)."""
    import http.client

    s = make_server(tmp_path)
    with s.client() as c:
        assert c.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
        assert c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "ok"}}).status_code == 200
    before = snapshot_tree(tmp_path)
    codes: dict[int, int] = {}
    n = 0
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)

    def req(method: str, url: str, body: dict | None = None) -> tuple[int, str]:
        nonlocal n
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, url, body=data, headers={"Authorization": f"Bearer {s.token}",
                                                       "Content-Type": "application/json"})
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
        n += 1
        codes[r.status] = codes.get(r.status, 0) + 1
        return r.status, text

    try:
        for ws in EVIL_IDS:
            for raw in (ws, _unquote(ws)):
                status, text = req("POST", "/cp/admin/workspaces", {"id": raw})
                if status == 201:  # a legal id after all ("a..b", "con"): it must stay inside workspaces/
                    assert "/" not in raw and raw not in (".", "..")
                    assert (s.data / "workspaces" / raw / "configs" / "secrets.d").is_dir()
                    req("DELETE", f"/cp/admin/workspaces/{raw}")
                    continue
                assert status == 400, (raw[:60], status, text[:200])
            if ws in ("a..b", "con", "workspaces"):
                continue  # legal ids: the routes below would simply 404
            for method, url, body in [
                    ("GET", f"/cp/admin/workspaces/{ws}", None), ("DELETE", f"/cp/admin/workspaces/{ws}", None),
                    ("POST", f"/cp/admin/workspaces/{ws}/restart", None),
                    ("POST", f"/cp/admin/workspaces/{ws}/env", {"env": {"B": "x"}}),
                    ("GET", f"/cp/admin/workspaces/{ws}/env", None),
                    ("DELETE", f"/cp/admin/workspaces/{ws}/env/A", None),
                    ("GET", f"/cp/admin/workspaces/{ws}/env/A/versions", None),
                    ("POST", f"/cp/admin/workspaces/{ws}/env/A/rollback", {"version": 1})]:
                status, text = req(method, url, body)
                assert 400 <= status < 500, (method, url[:80], status, text[:200])
        for name in EVIL_NAMES:
            for scope in ("/cp/admin/workspaces/w/env", "/cp/admin/env"):
                for method, url, body in [("DELETE", f"{scope}/{name}", None), ("GET", f"{scope}/{name}/versions", None),
                                          ("POST", f"{scope}/{name}/rollback", {"version": 1})]:
                    status, text = req(method, url, body)
                    assert 400 <= status < 500, (method, url[:80], status, text[:200])
    finally:
        conn.close()
        s.stop()
    after = snapshot_tree(tmp_path)
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and not k.startswith(("data/secretsd.db", "data-server.log"))
                     and "/..gen-" not in k)
    assert changed == [], changed[:20]
    assert folder(s.data, "w") == {"A": b"ok"}
    assert codes.get(500, 0) == 0
    record("path_traversal", requests=n, status_counts=codes, files_changed_outside=len(changed))


def _unquote(s: str) -> str:
    from urllib.parse import unquote

    return unquote(s)


def _outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    (out / "secrets.d").mkdir(parents=True)
    (out / "decoy").write_text("decoy")
    (out / "secrets.d" / "K0").write_text("outside-K0")
    (out / "secrets.d" / "load.sh").write_text("# outside")
    os.chmod(out / "decoy", 0o640)
    return out


def _put_back(victim: Path) -> None:
    """Undo a half swap: the real folder back in place, whatever the writer re-created meanwhile dropped."""
    aside = victim.with_name(victim.name + ".aside")
    try:
        if not aside.exists():
            return
        if victim.is_symlink():
            victim.unlink()
        if victim.exists():  # the writer re-created it while the real one was aside
            shutil.rmtree(aside)
        else:
            os.rename(aside, victim)
    except OSError:
        pass  # raced with the writer again: the next round retries


def test_folder_swap_attack_while_the_api_writes(tmp_path: Path) -> None:
    """A thread keeps swapping configs/ and configs/secrets.d for symlinks to an outside folder."""
    s = make_server(tmp_path)
    outside = _outside(tmp_path)
    outside_before = snapshot_tree(outside)
    ws = "sw"
    configs = s.data / "workspaces" / ws / "configs"
    stop = threading.Event()
    swaps = {"n": 0}
    codes: dict[int, int] = {}

    def attacker() -> None:
        sd = configs / "secrets.d"
        while not stop.is_set():
            for victim, target in ((sd, outside / "secrets.d"), (configs, outside)):
                try:
                    aside = victim.with_name(victim.name + ".aside")
                    os.rename(victim, aside)
                    os.symlink(target, victim)
                    time.sleep(0.002)
                    os.unlink(victim)
                    os.rename(aside, victim)
                    swaps["n"] += 1
                except OSError:
                    _put_back(victim)  # the writer re-created the folder meanwhile: keep attacking
    try:
        with s.client() as c:
            assert c.post("/cp/admin/workspaces", json={"id": ws}).status_code == 201
            t = threading.Thread(target=attacker, daemon=True)
            t.start()
            deadline = time.monotonic() + float(os.environ.get("SECRETSD_SWAP_SECONDS", "8"))
            i = 0
            while time.monotonic() < deadline:
                i += 1
                r = c.post(f"/cp/admin/workspaces/{ws}/env", json={"env": {"K0": f"v{i}", f"K{i % 7 + 1}": f"w{i}"}})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                assert r.status_code in (200, 502, 503), (r.status_code, r.text[:300])
            stop.set()
            t.join()
            # Undo any half swap, then the next write heals.
            for victim in (configs / "secrets.d", configs):
                _put_back(victim)
            r = c.post(f"/cp/admin/workspaces/{ws}/env", json={"env": {"K0": "final"}})
            assert r.status_code == 200, r.text
    finally:
        s.stop()
    assert snapshot_tree(outside) == outside_before, "something was written outside the workspace folder"
    assert folder(s.data, ws) == store_values(s.data, ws)
    record("folder_swap_attack", pushes=sum(codes.values()), status_counts=codes, swaps=swaps["n"],
           outside_changes=0)
    assert swaps["n"] > 20 and codes.get(200, 0) > 5, (swaps, codes)


def test_hard_links_and_planted_links_in_the_host_folder(inproc: App, tmp_path: Path) -> None:
    """Hard links and symlinks to outside files, planted under the key names the API is about to write."""
    outside = _outside(tmp_path)
    c = inproc.client
    assert c.post("/cp/admin/workspaces", json={"id": "hl"}).status_code == 201
    assert c.post("/cp/admin/workspaces/hl/env", json={"env": {"A": "a1", "B": "b1"}}).status_code == 200
    sd = inproc.data / "workspaces" / "hl" / "configs" / "secrets.d"
    before = snapshot_tree(outside)
    gen = sd / os.readlink(sd / "..data")
    (sd / "C").unlink(missing_ok=True)
    os.link(outside / "decoy", sd / "C")  # hard link planted as a new key's top-level name
    os.unlink(gen / "A")
    os.link(outside / "secrets.d" / "K0", gen / "A")  # hard link inside the current generation
    os.symlink(outside / "decoy", sd / "D")  # symlink planted as a key name
    os.symlink(outside / "secrets.d", sd / "..data_tmp")  # the writer's temp names
    import hashlib

    for k in "CD":
        os.symlink(outside / "decoy", sd / f"..tmp-link-{hashlib.sha256(k.encode()).hexdigest()[:16]}")
    (sd / "B").unlink()
    os.symlink(outside / "decoy", sd / "B")
    for i in range(3):
        r = c.post("/cp/admin/workspaces/hl/env", json={"env": {"A": f"a{i}", "B": f"b{i}", "C": f"c{i}", "D": f"d{i}"}})
        assert r.status_code in (200, 502, 503), r.text
    assert snapshot_tree(outside) == before
    assert c.post("/cp/admin/workspaces/hl/restart").status_code in (200, 501)
    got = folder(inproc.data, "hl")
    assert {k: got.get(k) for k in "ABCD"} == {"A": b"a2", "B": b"b2", "C": b"c2", "D": b"d2"}, got
    record("hard_and_sym_links", outside_changes=0)


@pytest.mark.parametrize("n", [244, 245, 254, 255])
def test_longest_legal_names_through_the_api(inproc: App, n: int) -> None:
    """Regression: names of 245..255 bytes made the writer's temp link name exceed NAME_MAX (502)."""
    c = inproc.client
    assert c.post("/cp/admin/workspaces", json={"id": "long"}).status_code == 201
    name = "L" * n
    r = c.post("/cp/admin/workspaces/long/env", json={"env": {name: "v", "B" + "_" * (n - 1): "w"}})
    assert r.status_code == 200, r.text[:300]
    assert c.delete(f"/cp/admin/workspaces/long/env/{name}").status_code == 200
    assert folder(inproc.data, "long") == {"B" + "_" * (n - 1): b"w"}
    r = c.post("/cp/admin/workspaces/long/env", json={"env": {"L" * 256: "v"}})
    assert r.status_code == 400
