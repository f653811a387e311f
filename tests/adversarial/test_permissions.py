"""Permissions: after each API operation, and after a hostile chmod -R 777 / chown -R in the workspace,
the next API write restores 0700/0600 and owner 1000:1000; `secretsd doctor` reports the drift first."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from secretsd.format.loadcache import CACHE_NAME

from .conftest import App
from .helpers import record

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def drift(sd: Path) -> list[str]:
    """Everything under secrets.d whose mode or owner is off the contract (links: owner only)."""
    bad = []
    for dirpath, dirs, files in os.walk(sd):
        for n in [None, *dirs, *files] if dirpath == str(sd) else [*dirs, *files]:
            p = Path(dirpath) / n if n else Path(dirpath)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                want_mode = None
            elif stat.S_ISDIR(st.st_mode):
                want_mode = 0o700
            elif p.name == "load.sh":
                want_mode = 0o644
            elif p.name == CACHE_NAME:  # a root writer's loader cache: root's, group-readable (docs/format.md)
                want_mode = 0o640
            else:
                want_mode = 0o600
            if want_mode is not None and stat.S_IMODE(st.st_mode) != want_mode:
                bad.append(f"{p.relative_to(sd.parent)} mode {stat.S_IMODE(st.st_mode):o}")
            want_owner = (0, 1000) if p.name == CACHE_NAME else (1000, 1000)
            if (st.st_uid, st.st_gid) != want_owner:
                bad.append(f"{p.relative_to(sd.parent)} owner {st.st_uid}:{st.st_gid}")
    return bad


@needs_root
def test_modes_hold_after_every_operation_and_heal_after_hostile_chmod_chown(inproc: App) -> None:
    c = inproc.client
    sd = inproc.data / "workspaces" / "p" / "configs" / "secrets.d"
    ops = [
        ("create", lambda: c.post("/cp/admin/workspaces", json={"id": "p"})),
        ("push", lambda: c.post("/cp/admin/workspaces/p/env", json={"env": {"A": "a", "B": "b"}})),
        ("push-single", lambda: c.post("/cp/admin/workspaces/p/env", json={"key": "A", "value": "a2"})),
        ("global", lambda: c.post("/cp/admin/env", json={"env": {"G": "g"}})),
        ("delete", lambda: c.delete("/cp/admin/workspaces/p/env/B")),
        ("rollback", lambda: c.post("/cp/admin/workspaces/p/env/A/rollback", json={"version": 1})),
        ("delete-global", lambda: c.delete("/cp/admin/env/G")),
    ]
    for name, op in ops:
        r = op()
        assert r.status_code in (200, 201), (name, r.text)
        assert drift(sd) == [], (name, drift(sd))
    # Hostile: what a real entrypoint (or an attacker in the container) does.
    subprocess.run(["chmod", "-R", "777", str(sd.parent)], check=True)
    subprocess.run(["chown", "-R", "0:0", str(sd)], check=True)
    before = drift(sd)
    assert before
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    doc = subprocess.run([sys.executable, "-m", "secretsd.cli", "doctor", "--json", "--dir", str(sd)],
                         capture_output=True, env=env, timeout=60)
    findings = json.loads(doc.stdout)
    codes = sorted({f.get("code") for f in findings if f.get("severity") != "ok"})
    assert findings and codes, doc.stdout[:500]
    r = c.post("/cp/admin/workspaces/p/env", json={"env": {"C": "c"}})
    assert r.status_code == 200, r.text
    current = os.readlink(sd / "..data")
    after = drift(sd)
    # Superseded generations keep the hostile modes until they are collected (5 s grace); they sit inside
    # secrets.d, which is 0700 and owned by 1000 again, so only uid 1000 and root can reach them.
    live = [d for d in after if not (d.startswith("secrets.d/..gen-") and not d.startswith(f"secrets.d/{current}"))]
    import time

    from secretsd.format.writer import DEFAULT_GRACE

    time.sleep(DEFAULT_GRACE + 0.5)
    assert c.post("/cp/admin/workspaces/p/env", json={"env": {"D": "d"}}).status_code == 200
    after_grace = drift(sd)
    record("permissions", operations=len(ops), drift_entries_after_chmod_chown=len(before),
           doctor_exit=doc.returncode, doctor_codes=codes, drift_live_after_next_write=len(live),
           drift_in_superseded_generations=len(after) - len(live), drift_after_grace_and_one_write=len(after_grace))
    assert live == [], live
    assert after_grace == [], after_grace
