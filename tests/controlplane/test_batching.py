"""Pushes to many workspaces committed and written as one group (service._GroupCommit + LocalHost.apply_many).

The group is made deterministic by holding the group-commit lock while the pushes queue up: the next
leader then takes all of them at once, as it does under load."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from secretsd.controlplane.hosts import LocalHost
from secretsd.format.durability import BatchSync

from .conftest import Env


def _grouped_pushes(env: Env, pushes: dict[str, dict[str, str]]) -> dict[str, httpx.Response]:
    """Send every push from its own thread while the group lock is held; release once all are queued."""
    service = env.app.state.cp.service
    out: dict[str, httpx.Response] = {}
    with service._group._lock:
        threads = [threading.Thread(target=lambda ws=ws, e=e: out.__setitem__(ws, env.push(ws, e)))
                   for ws, e in pushes.items()]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(service._group._queue) < len(pushes) and time.monotonic() < deadline:
            time.sleep(0.01)  # every push queues itself, then waits for the lock we hold
        assert len(service._group._queue) == len(pushes)
    for t in threads:
        t.join(30)
    return out


def test_one_group_writes_every_folder_with_shared_barriers(make_env: Callable[..., Env]) -> None:
    env = make_env()
    wss = [f"w{i}" for i in range(6)]
    for ws in wss:
        env.create(ws)
        assert env.push(ws, {"A": "0"}).status_code == 200
    host = env.app.state.cp.host
    barriers = host.sync.barriers
    res = _grouped_pushes(env, {ws: {"A": f"new-{ws}", "B": ws} for ws in wss})
    assert {ws: r.status_code for ws, r in res.items()} == dict.fromkeys(wss, 200)
    assert all(r.json()["persisted"] is True and r.json()["versions"] == {"A": 2, "B": 1} for r in res.values())
    for ws in wss:
        assert env.folder(ws) == {"A": f"new-{ws}".encode(), "B": ws.encode()}
    metrics = env.client.get("/metrics").text
    assert "secretsd_write_batch_folders_count 1.0" in metrics  # one batch of all six
    fd = os.open(env.data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs_here = BatchSync("syncfs").defers(fd, 2)
    finally:
        os.close(fd)
    if syncfs_here:
        # Six folders in one batch: two syncfs for all of them.
        assert host.sync.barriers - barriers == 2


def test_a_failing_folder_in_a_group_fails_alone(make_env: Callable[..., Env]) -> None:
    env = make_env()
    for ws in ("ok1", "gone", "bad", "ok2"):
        env.create(ws)
        assert env.push(ws, {"A": "0", "KEEP": "k"}).status_code == 200
    base = env.data / "workspaces"
    shutil.rmtree(base / "gone" / "configs" / "secrets.d")  # wiped: its owner rewrites it whole
    (base / "bad" / "configs" / "secrets.d" / "HAND").write_bytes(b"x\0y")  # a file the writer refuses
    res = _grouped_pushes(env, {ws: {"A": f"1-{ws}"} for ws in ("ok1", "gone", "bad", "ok2")})
    assert res["ok1"].status_code == res["ok2"].status_code == res["gone"].status_code == 200
    assert res["bad"].status_code == 502 and res["bad"].json()["persisted"] is False
    assert "workspace bad: HAND: hand-made file" in res["bad"].json()["error"]
    assert env.folder("ok1") == {"A": b"1-ok1", "KEEP": b"k"} and env.folder("ok2") == {"A": b"1-ok2", "KEEP": b"k"}
    assert env.folder("gone") == {"A": b"1-gone", "KEEP": b"k"}  # healed from the store, not just the batch
    # The refused push is stored (pending) and lands once the folder is fixed.
    (base / "bad" / "configs" / "secrets.d" / "HAND").unlink()
    assert env.push("bad", {"OTHER": "o"}).status_code == 200
    assert env.folder("bad") == {"A": b"1-bad", "KEEP": b"k", "OTHER": b"o"}


class _BrokenBatchHost(LocalHost):
    """apply_many fails with an unexpected exception whose text holds the values (a bug elsewhere)."""

    def apply_many(self, writes):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"unexpected: {[dict(w[1]) for w in writes]!r}")


def test_a_broken_batch_falls_back_to_one_write_per_folder_and_logs_no_value(
        make_env: Callable[..., Env], tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "broken"
    env = make_env(host=_BrokenBatchHost(data), data=data)
    canary = "CANARY" + uuid.uuid4().hex
    for ws in ("a", "b", "c"):
        env.create(ws)
    res = _grouped_pushes(env, {ws: {"A": f"{canary}-{ws}"} for ws in ("a", "b", "c")})
    assert {ws: r.status_code for ws, r in res.items()} == dict.fromkeys(("a", "b", "c"), 200)
    assert all(env.folder(ws) == {"A": f"{canary}-{ws}".encode()} for ws in ("a", "b", "c"))
    logs = "\n".join(rec.getMessage() + (str(rec.exc_info) if rec.exc_info else "") for rec in caplog.records)
    assert "batched folder write failed (RuntimeError)" in logs
    assert canary not in logs


def test_a_global_push_writes_the_workspaces_in_batches(make_env: Callable[..., Env]) -> None:
    env = make_env()
    wss = [f"g{i}" for i in range(5)]
    for ws in wss:
        env.create(ws)
        assert env.push(ws, {"OWN": ws}).status_code == 200
    base = env.data / "workspaces"
    shutil.rmtree(base / "g1" / "configs" / "secrets.d")  # wiped: rewritten whole, alone
    (base / "g3" / "configs" / "secrets.d" / "HAND").write_bytes(b"x\0y")  # refused: that folder fails alone
    env.app.state.cp.service.fan_out_batch = 2  # chunks g0 g1 | g2 g3 | g4
    r = env.push(None, {"G": "global"})
    assert r.status_code == 502 and r.json()["persisted"] is False and r.json()["failed_workspaces"] == ["g3"]
    for ws in ("g0", "g1", "g2", "g4"):
        assert env.folder(ws) == {"OWN": ws.encode(), "G": b"global"}
    metrics = env.client.get("/metrics").text
    # Two batches of two (g1's missing folder is found in its batch and rewritten whole after it); g4 alone.
    assert "secretsd_write_batch_folders_count 2.0" in metrics and "secretsd_write_batch_folders_sum 4.0" in metrics
    (base / "g3" / "configs" / "secrets.d" / "HAND").unlink()
    assert env.client.delete("/cp/admin/env/G").status_code == 200  # a batch again, all five folders
    assert all(env.folder(ws) == {"OWN": ws.encode()} for ws in wss)


def test_a_folder_held_by_another_writer_delays_only_its_own_push(make_env: Callable[..., Env]) -> None:
    import fcntl

    env = make_env()
    for ws in ("a", "held", "b"):
        env.create(ws)
        assert env.push(ws, {"A": "0"}).status_code == 200
    fd = os.open(env.data / "workspaces" / "held" / "configs" / "secrets.d", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # e.g. `secretsd set` from a shell, or a stuck process
    answered: dict[str, float] = {}
    start = time.monotonic()
    orig = env.push

    def timed(ws, e, **kw):  # type: ignore[no-untyped-def]
        r = orig(ws, e, **kw)
        answered[ws] = time.monotonic() - start
        return r

    env.push = timed  # type: ignore[method-assign]
    release = threading.Timer(1.5, lambda: os.close(fd))
    release.start()
    res = _grouped_pushes(env, {ws: {"A": f"1-{ws}"} for ws in ("a", "held", "b")})
    release.join()
    assert {ws: r.status_code for ws, r in res.items()} == {"a": 200, "held": 200, "b": 200}
    assert answered["a"] < 1.2 and answered["b"] < 1.2, answered  # not held up by the stuck folder
    assert answered["held"] >= 1.4, answered  # waited for the lock, alone
    assert all(env.folder(ws) == {"A": f"1-{ws}".encode()} for ws in ("a", "held", "b"))


def test_a_global_push_waiting_for_a_held_folder_holds_up_no_other_workspace(make_env: Callable[..., Env]) -> None:
    import fcntl

    env = make_env()
    for ws in ("a", "held", "b"):
        env.create(ws)
        assert env.push(ws, {"OWN": ws}).status_code == 200
    fd = os.open(env.data / "workspaces" / "held" / "configs" / "secrets.d", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    out: dict[str, httpx.Response] = {}
    glob = threading.Thread(target=lambda: out.__setitem__("g", env.push(None, {"G": "g"})))
    glob.start()
    time.sleep(0.5)  # the global push has written a and b and now waits for "held"
    t0 = time.monotonic()
    assert env.push("a", {"OWN": "a2"}).status_code == 200
    assert time.monotonic() - t0 < 1.0  # a's lock is not held while the global push waits for another folder
    os.close(fd)
    glob.join(30)
    assert out["g"].status_code == 200
    assert env.folder("a") == {"OWN": b"a2", "G": b"g"} and env.folder("held") == {"OWN": b"held", "G": b"g"}
    assert env.folder("b") == {"OWN": b"b", "G": b"g"}


@pytest.mark.parametrize("how", ["dangling", "outside", "generation-removed", "value-is-a-link", "key-removed",
                                 "keys-removed", "value-edited"])
def test_a_damaged_folder_is_rewritten_whole_alone_and_in_a_group(make_env: Callable[..., Env], tmp_path,
                                                                   how: str) -> None:
    """A push into a folder the workspace user damaged answers 200 only with every stored key in it
    (it dropped the keys it could not read, with persisted: true, before)."""
    from tests.format.test_batch import _damage

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "K2").write_bytes(b"not ours")
    env = make_env()
    assert env.push(None, {"G": "g"}).status_code == 200
    for ws in ("lone", "d1", "d2", "ok"):
        env.create(ws)
        assert env.push(ws, {"K1": "1", "K2": "2", "K3": "3"}).status_code == 200
    host = env.app.state.cp.host
    _damage(host.secrets_dir("lone"), how, outside)
    r = env.push("lone", {"K1": "new"})
    assert r.status_code == 200 and r.json()["persisted"] is True
    assert env.folder("lone") == {"G": b"g", "K1": b"new", "K2": b"2", "K3": b"3"}
    for ws in ("d1", "d2"):
        _damage(host.secrets_dir(ws), how, outside)
    res = _grouped_pushes(env, {ws: {"K1": f"new-{ws}"} for ws in ("d1", "d2", "ok")})
    assert all(r.status_code == 200 and r.json()["persisted"] is True for r in res.values()), res
    for ws in ("d1", "d2", "ok"):
        assert env.folder(ws) == {"G": b"g", "K1": f"new-{ws}".encode(), "K2": b"2", "K3": b"3"}
        assert env.client.get(f"/cp/admin/workspaces/{ws}").json()["pending"] == []
    assert (outside / "K2").read_bytes() == b"not ours" and os.listdir(outside) == ["K2"]


def test_a_folder_at_load_sh_is_replaced_not_a_502_forever(make_env: Callable[..., Env], caplog) -> None:
    """`rm load.sh; mkdir load.sh` by the workspace user made every write to that workspace, and so
    every global push, a 502 until the user removed it."""
    env = make_env()
    for ws in ("w1", "w2"):
        env.create(ws)
        assert env.push(ws, {"A": "1"}).status_code == 200
    loader = env.data / "workspaces" / "w1" / "configs" / "secrets.d" / "load.sh"
    loader.unlink()
    (loader / "sub").mkdir(parents=True)
    (loader / "sub" / "f").write_bytes(b"x")
    assert env.push("w1", {"B": "2"}).status_code == 200
    assert loader.is_file() and not loader.is_symlink() and env.folder("w1") == {"A": b"1", "B": b"2"}
    loader.unlink()
    loader.mkdir()
    r = env.push(None, {"G": "g"})
    assert r.status_code == 200 and r.json()["failed_workspaces"] == [], r.text
    assert loader.is_file() and env.folder("w1") == {"A": b"1", "B": b"2", "G": b"g"}


def test_a_failed_folder_write_is_logged_by_name(make_env: Callable[..., Env], caplog) -> None:
    env = make_env()
    env.create("w1")
    assert env.push("w1", {"A": "1"}).status_code == 200
    (env.data / "workspaces" / "w1" / "configs" / "secrets.d" / "HAND").write_bytes(b"x\0y")  # refused
    with caplog.at_level(logging.WARNING, logger="secretsd.controlplane"):
        r = env.push("w1", {"A": "cAnArY-logged"})
    assert r.status_code == 502
    assert "folder write failed, left pending" in caplog.text and "workspace w1: HAND" in caplog.text
    assert "cAnArY" not in caplog.text


def test_a_deep_tree_at_load_sh_is_removed_and_fails_no_other_workspace(make_env: Callable[..., Env]) -> None:
    """A folder at load.sh nested deeper than Python recurses (shutil.rmtree raised RecursionError: a 500,
    and a global push stopped before the other workspaces)."""
    import subprocess

    env = make_env()
    for ws in ("a-deep", "b-ok", "c-ok"):
        env.create(ws)
        assert env.push(ws, {"OWN": ws}).status_code == 200
    p = env.data / "workspaces" / "a-deep" / "configs" / "secrets.d"
    (p / "load.sh").unlink()
    _deep_tree(p, "load.sh")
    try:
        assert env.push("a-deep", {"OWN": "x"}).status_code == 200
        assert (p / "load.sh").is_file() and env.folder("a-deep") == {"OWN": b"x"}
        (p / "load.sh").unlink()
        (p / "load.sh").mkdir()
        env.app.state.cp.service.fan_out_batch = 2  # stands for more than 64 workspaces
        g = env.push(None, {"G": "g"})
        assert g.status_code == 200, g.text
        assert all(env.folder(ws).get("G") == b"g" for ws in ("a-deep", "b-ok", "c-ok"))
        # Deleting the workspace removes such a tree too (its rmtree was a 500).
        _deep_tree(p, "junk")
        assert env.client.delete("/cp/admin/workspaces/a-deep").status_code == 200
        assert not (env.data / "workspaces" / "a-deep").exists()
    finally:  # pytest's own temp cleanup recurses too
        subprocess.run(["rm", "-rf", str(env.data / "workspaces" / "a-deep")], check=False)


def _deep_tree(parent, top: str, depth: int = 1500) -> None:
    """``parent/top/a/a/...``, deeper than Python recurses."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in [top] + ["a"] * depth:
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
