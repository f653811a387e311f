"""Durability barriers for a batch of folder writes: one syncfs(2) per filesystem.

A lone write fsyncs what it wrote (each new file, the generation folder,
then the folder after the swap): about four journal commits and disk
flushes. A batch of folders written together (``format.batch``) instead
leaves those fsyncs out and calls ``barrier`` twice for the whole batch:
once after every new generation is written (before any ``..data`` swap)
and once after the swaps (before anyone is answered). The crash-safety
argument is the lone write's, with "fsync of these files" replaced by
"everything on this filesystem is durable".

syncfs is used only where it is known to mean that:

* Linux 5.8 or later: older kernels return 0 from syncfs even when
  writeback failed, so an I/O error would go unnoticed;
* a local filesystem whose syncfs writes back and flushes everything
  (ext2/3/4, xfs, btrfs, f2fs; tmpfs holds nothing durable anyway). A
  FUSE or network filesystem may not: there each file is fsync'ed;
* and only while it stays cheap. syncfs also writes everybody else's dirty
  data on that filesystem: beside a container writing gigabytes it would
  wait for all of it. A barrier slower than what fsyncs per file would
  have cost moves that filesystem back to fsyncs per file for a while.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Sequence
from typing import Literal

SyncMode = Literal["auto", "fsync", "syncfs"]
SYNC_MODES: tuple[SyncMode, ...] = ("auto", "fsync", "syncfs")

#: statfs f_type of the filesystems whose syncfs is a full barrier.
_SYNCFS_SAFE = {
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0xF2F52010: "f2fs",
    0x01021994: "tmpfs",
}

_libc = ctypes.CDLL(None, use_errno=True)  # CDLL calls release the GIL
_syncfs = getattr(_libc, "syncfs", None)
_fstatfs = getattr(_libc, "fstatfs", None)


def kernel_reports_syncfs_errors(release: str | None = None) -> bool:
    """Linux >= 5.8: syncfs returns writeback errors (commit 735e4ae5ba28)."""
    release = release if release is not None else os.uname().release
    try:
        major, minor = (int(p) for p in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


def fs_magic(fd: int) -> int | None:
    """statfs(2) f_type of the filesystem holding ``fd`` (None if unknown)."""
    if _fstatfs is None:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux; f_type comes first
    if _fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def syncfs(fd: int) -> None:
    """syncfs(2): write back and flush the filesystem holding ``fd``. Raises OSError."""
    if _syncfs is None:
        raise OSError(0, "syncfs is not available")
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class BatchSync:
    """Decides, per folder of a batch, whether its fsyncs wait for ``barrier``.

    ``mode``: "auto" defers in batches of ``min_batch`` folders or more on a
    filesystem where syncfs is safe and has been cheap; "fsync" never defers
    (every write fsyncs its own files, batch or not); "syncfs" defers in every
    batch where syncfs is safe (tests and benchmarks).
    """

    #: A barrier slower than this per folder (what a lone write's fsyncs cost
    #: here, about 4 x 0.35 ms, with room) means other writers' dirty data.
    slow_per_folder = 0.002
    slow_floor = 0.02
    #: How long a filesystem found slow keeps fsyncs per file.
    cooldown = 30.0

    def __init__(self, mode: SyncMode = "auto", *, min_batch: int = 2) -> None:
        if mode not in SYNC_MODES:
            raise ValueError(f"sync mode must be one of {', '.join(SYNC_MODES)}, not {mode!r}")
        self.mode = mode
        self.min_batch = 1 if mode == "syncfs" else min_batch
        self._kernel_ok = kernel_reports_syncfs_errors() and _syncfs is not None
        self._safe: dict[int, bool] = {}  # st_dev -> syncfs is a full barrier there
        self._slow_until: dict[int, float] = {}  # st_dev -> monotonic time fsyncs per file end
        self._guard = threading.Lock()
        self.barriers = 0  # counters for tests and metrics
        self.slow_barriers = 0

    def defers(self, fd: int, batch_size: int) -> bool:
        """True: write this folder without fsyncs; ``barrier`` makes it durable."""
        if self.mode == "fsync" or batch_size < self.min_batch or not self._kernel_ok:
            return False
        dev = os.fstat(fd).st_dev
        with self._guard:
            safe = self._safe.get(dev)
            if safe is None:
                safe = self._safe[dev] = fs_magic(fd) in _SYNCFS_SAFE
            if not safe:
                return False
            until = self._slow_until.get(dev)
            if until is not None and self.mode == "auto":
                if time.monotonic() < until:
                    return False
                del self._slow_until[dev]
        return True

    def barrier(self, fds: Sequence[int]) -> None:
        """Make everything written under these folders durable: one syncfs per filesystem."""
        if not fds:
            return
        by_dev: dict[int, int] = {}
        for fd in fds:
            by_dev.setdefault(os.fstat(fd).st_dev, fd)
        for dev, fd in by_dev.items():
            started = time.monotonic()
            syncfs(fd)
            took = time.monotonic() - started
            with self._guard:
                self.barriers += 1
                if took > max(self.slow_floor, self.slow_per_folder * len(fds)):
                    self.slow_barriers += 1
                    self._slow_until[dev] = time.monotonic() + self.cooldown
