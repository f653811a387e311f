"""Many secrets.d folders written together: the writer's commit with shared barriers.

``SecretsDir.apply`` makes one folder's change durable with its own fsyncs
(about four journal commits). ``apply_batch`` runs the same steps for many
folders at once, each step for every folder before the next step, so that
the fsyncs of a step become one barrier for the whole batch
(``format.durability``):

1. every folder is locked, recovered and planned, and its next generation
   written, without fsync;
2. barrier: every new generation is durable (none is visible yet);
3. every folder gets its links and its ``..data`` swap, without fsync;
4. barrier: every swap is durable; only now is any change acknowledged;
5. links of removed keys go, superseded generations are collected; locks
   are released.

A crash anywhere leaves each folder with its old generation or its new one,
exactly as for a lone write: before 2 a new generation is an orphan that
recovery removes; between 2 and 4 a swap either reached the disk, pointing
at durable files, or did not. A folder whose barrier failed is reported
failed (its new generation removed if not yet swapped), the others are not
affected by its errors, and a folder another writer holds is not waited for
while the others are held: its result is ``FolderBusy``, for the caller to
write it alone (``SecretsDir.apply`` waits for the lock) once the batch is
done, so one stuck folder delays only its own change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from secretsd.format.durability import BatchSync
from secretsd.format.writer import LockTimeout, SecretsDir, WriteError, _Plan


class FolderBusy(LockTimeout):
    """Another writer held the folder when the batch came to it: nothing was done; write it alone."""


@dataclass
class FolderChange:
    """One folder's part of a batch: what ``SecretsDir.apply(set, delete)`` would do."""

    folder: SecretsDir
    set: Mapping[str, bytes]
    delete: Sequence[str] = field(default_factory=tuple)
    must_exist: bool = False  # as for SecretsDir.apply: FolderMissing rather than re-create it


@dataclass
class _Staged:
    index: int
    folder: SecretsDir
    fd: int
    plan: _Plan
    gen: str = ""
    deferred: bool = False


def _barrier_failed(exc: OSError) -> WriteError:
    return WriteError(None, f"cannot make the write durable: {exc.strerror or exc}", exc.errno)


def apply_batch(changes: Sequence[FolderChange], sync: BatchSync | None = None) -> list[Exception | None]:
    """Apply every change; one result per change, in order: None when it is
    durable, else the exception ``SecretsDir.apply`` would have raised.
    Changes must name distinct folders."""
    sync = sync or BatchSync()
    results: list[Exception | None] = [None] * len(changes)
    with ExitStack() as locks:
        staged: list[_Staged] = []
        for i, change in enumerate(changes):
            sd = change.folder
            try:
                update = sd._checked(change.set)
                fd = locks.enter_context(sd._locked(create=not change.must_exist, wait=False))
            except LockTimeout:
                results[i] = FolderBusy(f"{sd.path}: another writer holds the lock")
                continue
            except Exception as exc:  # noqa: BLE001 - this folder's result; the others go on
                results[i] = exc
                continue
            try:
                plan = sd._plan(fd, update, change.delete, intact=change.must_exist)
                if plan is None:
                    continue  # already holds exactly that
                s = _Staged(i, sd, fd, plan, deferred=sync.defers(fd, len(changes)))
                s.gen = sd._write_generation(fd, plan.gen, plan.old, plan.new, sync=not s.deferred, gens=plan.gens)
                staged.append(s)
            except Exception as exc:  # noqa: BLE001
                results[i] = exc

        # Barrier 1: every deferred generation durable before any swap points at it.
        deferred = [s for s in staged if s.deferred]
        try:
            sync.barrier([s.fd for s in deferred])
        except OSError as exc:
            for s in deferred:
                results[s.index] = _barrier_failed(exc)
                try:
                    s.folder._remove(s.fd, s.gen)
                except OSError:
                    pass  # an orphan newer than ..data: the folder's next recovery removes it
            staged = [s for s in staged if not s.deferred]

        published: list[_Staged] = []
        for s in staged:
            try:
                s.folder._publish(s.fd, s.gen, s.plan.old, s.plan.new, sync=not s.deferred)
                published.append(s)
            except Exception as exc:  # noqa: BLE001
                results[s.index] = exc

        # Barrier 2: every swap durable before anyone is told.
        try:
            sync.barrier([s.fd for s in published if s.deferred])
        except OSError as exc:
            # Swapped, so readers see the new set, but it may not survive a
            # crash: reported failed, and the caller rewrites it.
            for s in published:
                if s.deferred:
                    results[s.index] = _barrier_failed(exc)

        for s in published:
            try:
                s.folder._finish(s.fd, s.gen, s.plan.old, s.plan.new)
                s.folder._collect(s.fd, excess_only=not s.folder.collect_on_write, gens=s.plan.after(s.gen))
            except Exception as exc:  # noqa: BLE001
                results[s.index] = results[s.index] or exc
    return results
