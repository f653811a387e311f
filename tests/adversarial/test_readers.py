"""Readers during writes through the API: load.sh sourced in a loop while API batches rotate."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx

from .helpers import SOAK, make_server, record

KEYS = [f"R{i}" for i in range(8)]


def _value(tag: int, k: str) -> str:
    return f"{tag}:{k}:" + "v" * ((tag * 37 + len(k)) % 900) + ("\nmulti\n" if tag % 2 else "")


def _parse_env0(raw: bytes) -> dict[bytes, bytes]:
    out = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            out[k] = v
    return out


def test_load_sh_loop_while_api_batches_rotate(tmp_path: Path) -> None:
    seconds = float(os.environ.get("SECRETSD_READER_SECONDS", "60" if SOAK else "6"))
    s = make_server(tmp_path)
    sd = s.data / "workspaces" / "r" / "configs" / "secrets.d"
    stop = threading.Event()
    pushed = {"n": 0, "bad": 0}

    def pusher() -> None:
        with s.client() as c:
            tag = 0
            while not stop.is_set():
                tag += 1
                r = c.post("/cp/admin/workspaces/r/env", json={"env": {k: _value(tag, k) for k in KEYS}})
                pushed["n"] += r.status_code == 200
                pushed["bad"] += r.status_code != 200

    shells = [sh for sh in (["dash"], ["bash"], ["busybox", "ash"]) if shutil.which(sh[0])]
    loads = mixed = missing = 0
    tags: set[int] = set()
    try:
        with s.client() as c:
            assert c.post("/cp/admin/workspaces", json={"id": "r", "env": {}}).status_code == 201
            assert c.post("/cp/admin/workspaces/r/env", json={"env": {k: _value(0, k) for k in KEYS}}).status_code == 200
        t = threading.Thread(target=pusher, daemon=True)
        t.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sh = shells[loads % len(shells)]
            p = subprocess.run([*sh, "-c", f". '{sd}/load.sh'; exec /usr/bin/env -0"], capture_output=True,
                               env={"PATH": "/usr/bin:/bin", "SECRETSD_DIR": str(sd)}, timeout=30)
            assert p.returncode == 0, p.stderr
            env = _parse_env0(p.stdout)
            loads += 1
            got = {k: env.get(k.encode()) for k in KEYS}
            if any(v is None for v in got.values()):
                missing += 1
                continue
            seen = {int(v.split(b":", 1)[0]) for v in got.values()}
            if len(seen) != 1:
                mixed += 1
                continue
            tag = seen.pop()
            if any(got[k] != _value(tag, k).encode() for k in KEYS):
                mixed += 1  # torn value
            tags.add(tag)
        stop.set()
        t.join()
    finally:
        stop.set()
        s.stop()
    record("readers_during_api_writes", seconds=seconds, loads=loads, shells=[sh[0] for sh in shells],
           batches_pushed=pushed["n"], distinct_batches_seen=len(tags), mixed=mixed, missing=missing)
    assert mixed == 0 and missing == 0
    assert pushed["bad"] == 0
    assert len(tags) > 5, "the writer made too little progress for the test to mean anything"
