"""Resource faults through the API of a real server: full disk, read-only filesystem, database locked or
gone (SQLite file deleted, PostgreSQL stopped), host folder deleted mid-run.

Expected: a client mistake is never 5xx; a host-write failure is 502/503 with "persisted": false and
the change stored (pending); 0 acknowledged pushes lost; recovery once the fault clears.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .helpers import Server, folder, make_server, record, store_values

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True)


def _listing(c: httpx.Client, ws: str) -> dict[str, int]:
    return {m["name"]: m["version"] for m in c.get(f"/cp/admin/workspaces/{ws}/env").json()["secrets"]}


@needs_root
def test_full_disk_and_read_only_host_folder(tmp_path: Path) -> None:
    s = make_server(tmp_path, start=False)
    out: dict[str, object] = {}
    with tmpfs(s.data / "workspaces", "512k") as ws_fs:
        s.start()
        try:
            with s.client() as c:
                assert c.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
                assert c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a0"}}).status_code == 200
                # Fill the tmpfs from outside the folder so that the next generation cannot be written.
                filler = ws_fs / "filler"
                with open(filler, "wb") as fh:
                    try:
                        while True:
                            fh.write(b"\0" * 65536)
                            fh.flush()
                    except OSError:
                        pass
                r = c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a1", "B": "x" * 60000}})
                out["full_disk_status"] = r.status_code
                assert r.status_code == 503 and r.json()["persisted"] is False, r.text
                assert "No space" in r.json()["error"] or "ENOSPC" in r.json()["error"], r.text
                assert _listing(c, "w") == {"A": 2, "B": 1}  # stored: 0 data loss
                assert c.get("/cp/admin/workspaces/w").json()["pending"] == ["A", "B"]
                assert folder(s.data, "w") == {"A": b"a0"}  # the old set, intact
                # A client mistake while the disk is full is still a 4xx.
                assert c.post("/cp/admin/workspaces/w/env", json={"env": {"1BAD": "x"}}).status_code == 400
                filler.unlink()
                r = c.post("/cp/admin/workspaces/w/env", json={"env": {"C": "c"}})  # the next write heals it all
                assert r.status_code == 200, r.text
                assert folder(s.data, "w") == {"A": b"a1", "B": b"x" * 60000, "C": b"c"}
                # Read-only filesystem.
                remount(ws_fs, "ro")
                r = c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a2"}})
                out["read_only_status"] = r.status_code
                assert r.status_code in (502, 503) and r.json()["persisted"] is False, r.text
                assert "Read-only" in r.json()["error"] or "EROFS" in r.json()["error"], r.text
                remount(ws_fs, "rw")
                assert c.post("/cp/admin/workspaces/w/env", json={"env": {"D": "d"}}).status_code == 200
                assert folder(s.data, "w") == {"A": b"a2", "B": b"x" * 60000, "C": b"c", "D": b"d"}
                m = c.get("/metrics").text
                out["writethrough_failures_metric"] = [x for x in m.splitlines()
                                                       if x.startswith("secretsd_writethrough_failures_total")]
            # A fault left at shutdown is healed by the next start (startup reconciliation).
            with s.client() as c:
                remount(ws_fs, "ro")
                assert c.post("/cp/admin/workspaces/w/env", json={"env": {"E": "e"}}).status_code in (502, 503)
            s.stop()
            remount(ws_fs, "rw")
            s.start()
            assert folder(s.data, "w")["E"] == b"e"
        finally:
            s.stop()
    record("faults_host_folder", **out)


@needs_root
def test_full_disk_under_the_database(tmp_path: Path) -> None:
    """The whole data folder (database, WAL) on a tiny tmpfs: pushes until the disk is full."""
    data = tmp_path / "data"
    out: dict[str, object] = {}
    with tmpfs(data, "3m"):
        s = make_server(tmp_path)
        try:
            acked: dict[str, int] = {}
            statuses: dict[int, int] = {}
            with s.client() as c:
                assert c.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
                for i in range(400):
                    r = c.post("/cp/admin/workspaces/w/env", json={"env": {f"K{i % 40}": f"{i}:" + "v" * 20000}})
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        acked[f"K{i % 40}"] = r.json()["versions"][f"K{i % 40}"]
                    elif r.status_code >= 500 and statuses[r.status_code] > 5:
                        break
                out["statuses_while_filling"] = dict(statuses)
                out["last_error"] = r.text[:300]
                assert any(code >= 500 for code in statuses), "the disk never filled up"
                assert 500 not in statuses, f"disk full in the database surfaced as an internal error: {r.text}"
                for k, v in acked.items():
                    assert _listing(c, "w")[k] >= v  # 0 acknowledged pushes lost
                remount(data, "size=32m")  # the fault clears
                r = c.post("/cp/admin/workspaces/w/env", json={"env": {"AFTER": "x"}})
                out["after_space_freed"] = r.status_code
                assert r.status_code == 200, r.text
                assert folder(s.data, "w")["AFTER"] == b"x"
        finally:
            s.stop()
    record("faults_db_disk_full", **out)


def test_database_locked_by_another_process(tmp_path: Path) -> None:
    s = make_server(tmp_path)
    try:
        with s.client() as c:
            assert c.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
            con = sqlite3.connect(s.data / "secretsd.db", timeout=1, isolation_level=None, check_same_thread=False)
            con.execute("BEGIN EXCLUSIVE")
            held = 3.0
            release = threading.Timer(held, lambda: con.execute("ROLLBACK"))
            t0 = time.monotonic()
            release.start()
            r = c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a"}})
            waited = time.monotonic() - t0
            release.join()
            con.close()
            assert r.status_code == 200, r.text
            assert folder(s.data, "w") == {"A": b"a"}
    finally:
        s.stop()
    record("faults_db_locked", held_s=held, push_status=r.status_code, push_waited_s=round(waited, 2))
    assert waited >= held * 0.9  # it waited for the lock instead of failing


def test_sqlite_file_deleted_under_a_running_server(tmp_path: Path) -> None:
    s = make_server(tmp_path)
    try:
        with s.client() as c:
            assert c.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
            for suffix in ("", "-wal", "-shm"):
                (s.data / f"secretsd.db{suffix}").unlink(missing_ok=True)
            r = c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a"}})
            h = httpx.get(s.url + "/healthz")
            record("faults_db_deleted", push_status=r.status_code, healthz=h.status_code)
            assert r.status_code == 503 and "database" in r.json()["error"]
        s.stop()
        s.start()
        with s.client() as c:
            lost = r.status_code == 200 and c.get("/cp/admin/workspaces/w").status_code == 404
        assert not lost, "an acknowledged push was lost: it went into the deleted database file"
    finally:
        s.stop()


def test_postgres_stopped_and_restarted(tmp_path: Path) -> None:
    from store.pgserver import _as_pg, running_cluster, unavailable_reason

    if reason := unavailable_reason():
        pytest.skip(reason)
    with running_cluster() as pg:
        db = pg.create_database()
        s = make_server(tmp_path, args=["--db", pg.url(db)])
        opts = f"-p {pg.port} -k {pg.root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=32MB"
        ctl = [str(pg.bindir / "pg_ctl"), "-D", str(pg.datadir)]
        out: dict[str, object] = {}
        try:
            with s.client(timeout=120) as c:
                assert c.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
                assert c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a1"}}).status_code == 200
                subprocess.run(_as_pg([*ctl, "-m", "fast", "-w", "stop"]), check=True, capture_output=True)
                t0 = time.monotonic()
                r = c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a2"}})
                out["push_while_down"] = r.status_code
                out["push_while_down_s"] = round(time.monotonic() - t0, 2)
                out["push_while_down_body"] = r.text[:200]
                out["healthz_while_down"] = httpx.get(s.url + "/healthz", timeout=60).status_code
                out["bad_request_while_down"] = c.post("/cp/admin/workspaces/w/env",
                                                       json={"env": {"1BAD": "x"}}).status_code
                subprocess.run(_as_pg([*ctl, "-o", opts, "-l", str(pg.root / "server.log"), "-w", "start"]),
                               check=True, capture_output=True)
                t0 = time.monotonic()
                while True:  # the pool reconnects (pool_pre_ping)
                    r2 = c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a3"}})
                    if r2.status_code == 200 or time.monotonic() - t0 > 30:
                        break
                    time.sleep(0.5)
                out["recovered_push"] = r2.status_code
                out["recovery_s"] = round(time.monotonic() - t0, 2)
                assert folder(s.data, "w") == {"A": b"a3"}
        finally:
            s.stop()
        record("faults_postgres_stopped", **out)
        assert out["bad_request_while_down"] == 400
        assert out["push_while_down"] in (502, 503), out  # a clear "try again", not an internal error
        assert out["healthz_while_down"] == 503
        assert out["recovered_push"] == 200


def test_host_folder_deleted_mid_run(tmp_path: Path) -> None:
    import shutil

    s = make_server(tmp_path)
    stop = threading.Event()
    deletions = {"n": 0}
    ws_dir = s.data / "workspaces" / "w"

    def deleter() -> None:
        while not stop.is_set():
            shutil.rmtree(ws_dir, ignore_errors=True)
            deletions["n"] += 1
            time.sleep(0.05)

    codes: dict[int, int] = {}
    try:
        with s.client() as c:
            assert c.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
            assert c.post("/cp/admin/workspaces/w/env", json={"env": {"BASE": "b"}}).status_code == 200
            t = threading.Thread(target=deleter, daemon=True)
            t.start()
            for i in range(60):
                r = c.post("/cp/admin/workspaces/w/env", json={"env": {f"K{i % 5}": f"v{i}"}})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                assert r.status_code in (200, 502, 503), r.text
            stop.set()
            t.join()
            shutil.rmtree(ws_dir, ignore_errors=True)
            r = c.post("/cp/admin/workspaces/w/env", json={"env": {"LAST": "x"}})
            assert r.status_code == 200
            after_push = folder(s.data, "w")
        s.stop()
        s.start()  # a restart of the control plane materialises pending workspaces
        after_restart = folder(s.data, "w")
    finally:
        s.stop()
    expected = store_values(s.data, "w")
    record("faults_host_folder_deleted", pushes=sum(codes.values()), status_counts=codes, deletions=deletions["n"],
           keys_in_folder_after_next_push=len(after_push), keys_in_store=len(expected))
    assert after_push == expected, (
        f"after the folder was deleted, the next push wrote only its own keys: folder {sorted(after_push)}, "
        f"store {sorted(expected)}")
    assert after_restart == expected


@needs_root
def test_ebusy_and_permission_denied_in_the_host_folder(tmp_path: Path) -> None:
    """EBUSY: a file bind-mounted over the generation; EPERM: chattr +i on the folder (when supported)."""
    s = make_server(tmp_path)
    out: dict[str, object] = {}
    try:
        with s.client() as c:
            assert c.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
            assert c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a0", "B": "b0"}}).status_code == 200
            sd = s.data / "workspaces" / "w" / "configs" / "secrets.d"
            src = tmp_path / "bound"
            src.write_text("bound")
            # A file bind-mounted over a key's top-level name (what a runtime mounting single files does).
            # Resolve the link first: mount(8) would, and umount of the link would later miss the mount.
            target = sd / os.readlink(sd / "..data") / "A"
            subprocess.run(["mount", "--bind", str(src), str(target)], check=True)
            try:
                r = c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a1"}})
                out["bind_mount_status"] = r.status_code
                out["bind_mount_error"] = (r.json().get("error") or "")[:200]
                assert r.status_code in (200, 502, 503), r.text
                if r.status_code != 200:
                    assert r.json()["persisted"] is False
            finally:
                subprocess.run(["umount", str(target)], check=False)
            assert src.read_text() == "bound"  # never written through the mount
            assert c.post("/cp/admin/workspaces/w/env", json={"env": {"C": "c"}}).status_code == 200
            assert folder(s.data, "w") == {"A": b"a1", "B": b"b0", "C": b"c"}
            chattr = subprocess.run(["chattr", "+i", str(sd)], capture_output=True)
            out["chattr_supported"] = chattr.returncode == 0
            if chattr.returncode == 0:
                try:
                    r = c.post("/cp/admin/workspaces/w/env", json={"env": {"A": "a2"}})
                    out["immutable_status"] = r.status_code
                    out["immutable_error"] = (r.json().get("error") or "")[:200]
                    assert r.status_code in (502, 503) and r.json()["persisted"] is False, r.text
                finally:
                    subprocess.run(["chattr", "-i", str(sd)], check=False)
                assert c.post("/cp/admin/workspaces/w/env", json={"env": {"D": "d"}}).status_code == 200
                assert folder(s.data, "w") == {"A": b"a2", "B": b"b0", "C": b"c", "D": b"d"}
    finally:
        s.stop()
        _unmount_all_under(tmp_path)
    record("faults_ebusy_eperm", **out)


def _unmount_all_under(root: Path) -> None:
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh]
    for p in reversed(points):
        if p.startswith(str(root) + "/"):
            subprocess.run(["umount", "-l", p], check=False)


def test_folder_deleted_in_a_tight_loop_never_raises_in_the_service(inproc) -> None:
    """Regression: rm -rf of the folder between the writer's swap and its collection raised
    StopIteration (a 500 through the API). In-process, so the exception itself would show."""
    import shutil

    cp = inproc.app.state.cp
    assert inproc.client.post("/cp/admin/workspaces", json={"id": "w"}).status_code == 201
    ws_dir = inproc.data / "workspaces" / "w"
    stop = threading.Event()

    def deleter() -> None:
        while not stop.is_set():
            shutil.rmtree(ws_dir, ignore_errors=True)
            time.sleep(0.005)

    t = threading.Thread(target=deleter, daemon=True)
    t.start()
    failures = 0
    try:
        for i in range(int(os.environ.get("SECRETSD_DELETE_LOOP", "400"))):
            res = cp.service.push("w", {f"K{i % 5}": f"v{i}".encode()}, actor="test")
            failures += not res.persisted  # a HostError (502/503) is fine; any other exception fails the test
    finally:
        stop.set()
        t.join()
    shutil.rmtree(ws_dir, ignore_errors=True)
    assert cp.service.push("w", {"LAST": b"x"}, actor="test").persisted
    assert folder(inproc.data, "w") == cp.store.effective("w")
    record("faults_delete_loop_inprocess", pushes=400, host_failures=failures)
