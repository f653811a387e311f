"""Many folders written together (format.batch) and the syncfs barrier policy (format.durability).

Real folders on this machine's filesystem; kill -9 of a real process writing batches."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from secretsd.format import durability
from secretsd.format.batch import FolderBusy, FolderChange, apply_batch
from secretsd.format.durability import BatchSync, fs_magic, kernel_reports_syncfs_errors
from secretsd.format.loader import read_dir
from secretsd.format.rules import FormatError
from secretsd.format.writer import SecretsDir, WriteError

from .test_writer import batch, kill_9_after, leftovers, tag_of

CAN_SYNCFS = kernel_reports_syncfs_errors() and durability._syncfs is not None


def _folders(tmp_path: Path, n: int, **kw) -> list[SecretsDir]:
    base = tmp_path / "workspaces"
    base.mkdir(exist_ok=True)
    sds = [SecretsDir(base / f"w{i}" / "configs" / "secrets.d", base=base, grace=0.0, **kw) for i in range(n)]
    for sd in sds:
        sd.replace_all(batch(0))
    return sds


def _gens(sd: SecretsDir) -> list[str]:
    return sorted(p.name for p in sd.path.iterdir() if p.name.startswith("..gen-"))


@pytest.mark.parametrize("mode", ["syncfs", "fsync", "auto"])
def test_every_folder_gets_its_change(tmp_path: Path, mode: str) -> None:
    sds = _folders(tmp_path, 5)
    sync = BatchSync(mode)  # type: ignore[arg-type]
    changes = [FolderChange(sd, {"K1": f"v1-K1-{i}".encode(), "NEW": b"x"}, ["K2"]) for i, sd in enumerate(sds)]
    assert apply_batch(changes, sync) == [None] * 5
    for i, sd in enumerate(sds):
        want = {**batch(0), "K1": f"v1-K1-{i}".encode(), "NEW": b"x"}
        del want["K2"]
        assert read_dir(sd.path).values == want  # what a loader exports
        assert not (sd.path / "K2").is_symlink() and (sd.path / "NEW").is_symlink()
        assert not leftovers(sd.path)
    # One syncfs per barrier for the whole batch (one filesystem), or none at all.
    assert sync.barriers == (2 if mode != "fsync" and CAN_SYNCFS else 0)


def test_a_bad_folder_fails_alone(tmp_path: Path) -> None:
    sds = _folders(tmp_path, 3)
    (sds[1].path / "HAND").write_bytes(b"a\0b")  # a hand-made file the rules refuse: that folder's write fails
    res = apply_batch([FolderChange(sd, {"K1": b"new"}) for sd in sds], BatchSync("syncfs"))
    assert res[0] is None and res[2] is None
    assert isinstance(res[1], FormatError) and res[1].key == "HAND"
    assert read_dir(sds[0].path).values["K1"] == b"new" and read_dir(sds[2].path).values["K1"] == b"new"
    assert read_dir(sds[1].path).values["K1"] == batch(0)["K1"]
    res = apply_batch([FolderChange(sds[0], {"BAD": b"\0"})])
    assert isinstance(res[0], FormatError) and res[0].key == "BAD"


def test_a_folder_someone_else_holds_is_left_out_not_waited_for(tmp_path: Path) -> None:
    sds = _folders(tmp_path, 3)
    fd = os.open(sds[1].path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's writer (flock is per open file, so this blocks us too)
        started = time.monotonic()
        res = apply_batch([FolderChange(sd, {"K1": b"new"}) for sd in sds], BatchSync("syncfs"))
        assert time.monotonic() - started < sds[1].lock_timeout / 2  # did not wait for it
        assert res[0] is None and res[2] is None and isinstance(res[1], FolderBusy)
        assert read_dir(sds[1].path).values["K1"] == batch(0)["K1"]  # untouched
        assert read_dir(sds[0].path).values["K1"] == read_dir(sds[2].path).values["K1"] == b"new"
        release = threading.Timer(0.3, lambda: fcntl.flock(fd, fcntl.LOCK_UN))
        release.start()
        sds[1].apply({"K1": b"new"})  # the caller writes it alone, waiting for the lock
        release.join()
        assert read_dir(sds[1].path).values["K1"] == b"new"
    finally:
        os.close(fd)


@pytest.mark.skipif(not CAN_SYNCFS, reason="syncfs barriers need Linux >= 5.8")
@pytest.mark.parametrize("which", [1, 2])
def test_a_failed_barrier_reports_every_deferred_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        which: int) -> None:
    sds = _folders(tmp_path, 3)
    before = [_gens(sd) for sd in sds]
    calls = {"n": 0}
    real = durability.syncfs

    def failing(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == which:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(durability, "syncfs", failing)
    res = apply_batch([FolderChange(sd, {"K1": b"new"}) for sd in sds], BatchSync("syncfs"))
    assert all(isinstance(r, WriteError) and r.errno == errno.EIO for r in res), res
    assert all("durable" in str(r) for r in res)
    for sd, gens in zip(sds, before, strict=True):
        if which == 1:  # nothing was swapped: the old set, and the new generation is gone
            assert read_dir(sd.path).values == batch(0)
            assert _gens(sd) == gens
        else:  # swapped but not known durable: reported failed, the new set is what readers see
            assert read_dir(sd.path).values["K1"] == b"new"
        assert not leftovers(sd.path)


def test_policy() -> None:
    assert kernel_reports_syncfs_errors("5.8.0") and kernel_reports_syncfs_errors("6.1.0-13-amd64")
    assert not kernel_reports_syncfs_errors("5.4.0-150-generic") and not kernel_reports_syncfs_errors("x")
    with pytest.raises(ValueError, match="sync mode"):
        BatchSync("sometimes")  # type: ignore[arg-type]


@pytest.mark.skipif(not CAN_SYNCFS, reason="syncfs barriers need Linux >= 5.8")
def test_deferral_rules(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fs_magic(fd) not in durability._SYNCFS_SAFE:
            pytest.skip(f"tmp_path is on a filesystem without a known syncfs (f_type {fs_magic(fd)!r})")
        auto = BatchSync("auto")
        assert not auto.defers(fd, 1)  # a lone write keeps its own fsyncs
        assert auto.defers(fd, 2)
        assert not BatchSync("fsync").defers(fd, 32)
        assert BatchSync("syncfs").defers(fd, 1)
        # A slow barrier (someone else's dirty data) moves this filesystem to fsyncs per file for a while.
        auto.slow_floor = auto.slow_per_folder = 0.0
        auto.barrier([fd])
        assert auto.slow_barriers == 1 and not auto.defers(fd, 32)
        auto._slow_until = {k: time.monotonic() - 1 for k in auto._slow_until}
        assert auto.defers(fd, 32)  # the cooldown ended
    finally:
        os.close(fd)


def test_unknown_filesystem_is_never_deferred(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(durability, "fs_magic", lambda fd: 0x65735546)  # FUSE: syncfs may not reach the daemon
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert not BatchSync("syncfs").defers(fd, 32)
    finally:
        os.close(fd)


def _batch_loop(paths: list[Path], start: int) -> None:
    base = paths[0].parents[2]
    sds = [SecretsDir(p, base=base, grace=0.0) for p in paths]
    sync = BatchSync("syncfs")
    i = start
    while True:
        i += 1
        res = apply_batch([FolderChange(sd, batch(i), [f"EXTRA_{(i - 1) % 3}"]) for sd in sds], sync)
        assert res == [None] * len(sds)


@pytest.mark.parametrize("iterations", [int(os.environ.get("SECRETSD_CRASH_ITERATIONS", "200"))])
def test_kill_9_mid_batch_leaves_each_folder_old_or_new(tmp_path: Path, iterations: int) -> None:
    sds = _folders(tmp_path, 4)
    paths = [sd.path for sd in sds]
    rng = random.Random(4321)
    t0 = time.monotonic()
    for i in range(1, 4):
        assert apply_batch([FolderChange(sd, batch(i), [f"EXTRA_{(i - 1) % 3}"]) for sd in sds],
                           BatchSync("syncfs")) == [None] * 4
    window = (time.monotonic() - t0) / 3 * 3
    last = 3
    progress = 0
    for _ in range(iterations):
        kill_9_after(rng.uniform(0, window), lambda: _batch_loop(paths, last))
        tags = [tag_of(read_dir(p).values) for p in paths]  # each folder: one complete batch, right now
        # Folders are written in order within a batch: each is at the batch before or the batch being written.
        assert max(tags) - min(tags) <= 1 and min(tags) >= last, tags
        for sd, tag in zip(sds, tags, strict=True):
            sd.repair()
            assert tag_of(sd.read_all()) == tag  # recovery never changes the set
            assert not leftovers(sd.path)
        progress += max(tags) > last
        last = max(tags)
        if min(tags) < last:  # bring the laggards level so the next child starts from one batch for all
            for sd in sds:
                sd.replace_all(batch(last))
    assert progress > iterations // 10, "the writer was mostly killed before it wrote anything"


def test_a_folder_wiped_mid_batch_is_reported_missing_not_recreated(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from secretsd.format.writer import FolderMissing

    sds = _folders(tmp_path, 2)
    real = SecretsDir._write_generation

    def wipe_b_while_a_is_written(self, fd, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.path == sds[0].path:
            shutil.rmtree(sds[1].path)  # an operator or a cleanup job, between the batch's folders
        return real(self, fd, *args, **kwargs)

    monkeypatch.setattr(SecretsDir, "_write_generation", wipe_b_while_a_is_written)
    res = apply_batch([FolderChange(sd, {"K1": b"new"}, must_exist=True) for sd in sds])
    assert res[0] is None and isinstance(res[1], FolderMissing)
    assert not sds[1].path.exists()  # not re-created holding this batch's keys only: the caller rewrites it whole
    sds[1].path.mkdir()
    with pytest.raises(FolderMissing):  # a folder without a generation is as good as wiped
        sds[1].apply({"K1": b"new"}, must_exist=True)
    # Without must_exist (the CLI's `secretsd set`), a folder is created as before.
    assert apply_batch([FolderChange(sds[1], {"K1": b"new"})]) == [None]
    assert read_dir(sds[1].path).values == {"K1": b"new"}


def _damage(sd: SecretsDir, how: str, outside: Path) -> None:
    """What a workspace user (who owns the folder) can do to the current generation."""
    data = sd.path / "..data"
    gen = sd.path / os.readlink(data)
    if how == "dangling":
        os.unlink(data)
        os.symlink("..gen-99999999", data)
    elif how == "outside":
        os.unlink(data)
        os.symlink(str(outside), data)
    elif how == "not-a-generation":
        (sd.path / "..mine").mkdir()
        (sd.path / "..mine" / "K2").write_bytes(b"planted")
        os.unlink(data)
        os.symlink("..mine", data)
    elif how == "generation-removed":
        shutil.rmtree(gen)
    elif how == "generation-is-a-link":
        shutil.rmtree(gen)
        os.symlink(str(outside), gen)
    elif how == "value-is-a-link":
        os.unlink(gen / "K2")
        os.symlink(str(outside / "K2"), gen / "K2")
    elif how == "value-is-a-fifo":
        os.unlink(gen / "K2")
        os.mkfifo(gen / "K2")
    elif how == "key-removed":  # `rm secrets.d/..data/K2`
        os.unlink(gen / "K2")
    elif how == "keys-removed":  # `rm secrets.d/..data/*` (the glob leaves .load-cache.sh)
        for name in ("K1", "K2", "K3"):
            os.unlink(gen / name)
    elif how == "key-renamed":
        os.rename(gen / "K2", gen / "K9")
    elif how == "value-edited":  # in place, a regular file with other bytes
        (gen / "K2").write_bytes(b"edited")
    elif how == "cache-removed":
        os.unlink(gen / ".load-cache.sh")
    else:
        raise AssertionError(how)


DAMAGE = ["dangling", "outside", "not-a-generation", "generation-removed", "generation-is-a-link",
          "value-is-a-link", "value-is-a-fifo", "key-removed", "keys-removed", "key-renamed", "value-edited",
          "cache-removed"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_folder_is_reported_missing_for_a_full_rewrite(tmp_path: Path, how: str) -> None:
    """An incremental write (must_exist: the control plane's write-through) must not build on a
    damaged generation: it would carry forward only the keys it could read and drop the others."""
    from secretsd.format.writer import FolderMissing

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "K2").write_bytes(b"not ours")
    sds = _folders(tmp_path, 2)
    for sd in sds:
        sd.replace_all({"K1": b"1", "K2": b"2", "K3": b"3"})
    _damage(sds[1], how, outside)
    res = apply_batch([FolderChange(sd, {"K1": b"new"}, must_exist=True) for sd in sds])
    assert res[0] is None and isinstance(res[1], FolderMissing), res
    with pytest.raises(FolderMissing):
        sds[1].apply({"K1": b"new"}, must_exist=True)
    assert (outside / "K2").read_bytes() == b"not ours" and os.listdir(outside) == ["K2"]
    # The full rewrite the caller then does heals it.
    sds[1].replace_all({"K1": b"new", "K2": b"2", "K3": b"3"})
    assert read_dir(sds[1].path).values == {"K1": b"new", "K2": b"2", "K3": b"3"}
    assert sds[1].apply({"K1": b"newer"}, must_exist=True) is None
    assert read_dir(sds[1].path).values == {"K1": b"newer", "K2": b"2", "K3": b"3"}
