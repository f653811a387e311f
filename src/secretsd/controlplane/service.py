"""Secrets operations: validate, commit to the store, write through, materialise.

Every change to a workspace's folder happens under that workspace's lock
and writes what the store holds, so folders follow commit order even when
many clients push at once. When a host write fails the store keeps the
change with its pending marks; the next write or materialisation of that
workspace rewrites the whole folder from the store.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field

from secretsd.controlplane.hosts import HostError, HostTarget
from secretsd.format.rules import FormatError, Rules, encode_value, env_string_size
from secretsd.store import GLOBAL, Change, Store
from secretsd.store.store import PutRequest

log = logging.getLogger("secretsd.controlplane")


class InvalidBatch(Exception):
    """One or more keys break the format rules; nothing was stored."""

    def __init__(self, problems: list[FormatError]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))

    @property
    def too_large(self) -> bool:
        return all(p.too_large for p in self.problems)


@dataclass
class _Queued:
    """A workspace push waiting for the group commit."""

    request: PutRequest
    done: bool = False
    result: WriteResult | None = None
    error: BaseException | None = None


@dataclass
class WriteResult:
    change: Change
    failures: dict[str, HostError] = field(default_factory=dict)

    @property
    def persisted(self) -> bool:
        return not self.failures


class _Locks:
    """One re-entrant lock per workspace ("" for global), created on demand."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}

    def __call__(self, ws: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(ws, threading.RLock())


class _PendingClearer:
    """Clears satisfied pending marks in the background, many per transaction.

    The marks are only a crash-recovery hint (the folder is already written),
    so clearing them off the request path saves a durable commit per push.
    A mark left behind by a crash only causes one extra rewrite at startup.
    """

    linger = 0.02

    def __init__(self, store: Store) -> None:
        self.store = store
        self._q: queue.Queue[tuple[str, list[str] | None, float | None]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="secretsd-pending", daemon=True)
        self._thread.start()

    def submit(self, ws: str, names: list[str] | None, upto: float | None) -> None:
        self._q.put((ws, names, upto))

    def flush(self) -> None:
        self._q.join()

    def _run(self) -> None:
        while True:
            batch = [self._q.get()]
            time.sleep(self.linger)  # let a burst accumulate: one commit for many pushes
            while True:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            try:
                self.store.clear_pending_many(batch)
            except Exception:  # noqa: BLE001 - marks stay; startup reconciles them
                pass
            finally:
                for _ in batch:
                    self._q.task_done()


@dataclass
class _Group:
    """One workspace's pushes in a cross-workspace group commit."""

    ws: str
    requests: list[PutRequest]
    outcomes: list[Change | Exception] = field(default_factory=list)
    written: bool = False  # the leader wrote the folder (``failure`` says how it went)
    failure: HostError | None = None
    error: BaseException | None = None
    done: bool = False

    def merged(self) -> tuple[dict[str, bytes], float]:
        """The values the committed pushes leave (later ones win, as their versions do) and their time."""
        merged: dict[str, bytes] = {}
        upto = 0.0
        for req, res in zip(self.requests, self.outcomes, strict=True):
            if isinstance(res, Change):
                merged.update(req.values)
                upto = max(upto, res.at)
        return merged, upto


class _GroupCommit:
    """Group commit ACROSS workspaces: one store transaction, then one batch of
    folder writes, for every workspace's pushes queued meanwhile.

    Each caller is a workspace's lock holder (so at most one group per
    workspace is queued, and folder writes still follow commit order);
    whoever takes the commit lock next commits all queued groups at once and
    hands their folders to ``write`` together (they share the durability
    barriers, see ``format.batch``). Saves a durable commit and about four
    fsyncs per push under concurrency, and the other callers wait on a lock
    instead of contending for the interpreter.
    """

    def __init__(self, store: Store, write: Callable[[list[_Group]], None]) -> None:
        self.store = store
        self.write = write
        self._lock = threading.Lock()
        self._guard = threading.Lock()
        self._queue: list[_Group] = []

    def run(self, ws: str, requests: list[PutRequest], fits: Callable[[str, dict[str, int]], None]) -> _Group:
        group = _Group(ws, requests)
        with self._guard:
            self._queue.append(group)
        with self._lock:
            if not group.done:
                with self._guard:
                    batch, self._queue = self._queue, []
                try:
                    results = self.store.put_groups([(g.ws, g.requests) for g in batch], fits=fits)
                except BaseException as exc:  # the commit failed: every group in it failed
                    for g in batch:
                        g.error, g.done = exc, True
                else:
                    for g, res in zip(batch, results, strict=True):
                        g.outcomes = res
                    try:
                        self.write(batch)
                    except Exception as exc:  # noqa: BLE001 - committed; each owner writes its own folder instead
                        # The type only: an unexpected exception's text may hold a value.
                        log.error("batched folder write failed (%s); writing the folders one by one",
                                  type(exc).__name__)
                    for g in batch:
                        g.done = True
        if group.error is not None:
            raise group.error
        return group


class SecretsService:
    def __init__(self, store: Store, host: HostTarget, *, rules: Rules | None = None,
                 on_write: Callable[[float], None] | None = None) -> None:
        self.store = store
        self.host = host
        self.rules = rules or Rules()
        self.lock = _Locks()
        self.on_write = on_write or (lambda _s: None)
        self.on_batch: Callable[[int], None] = lambda _n: None  # folders per batched write (a metric)
        # Workspaces whose folder may lag the store: their next write is a full rewrite.
        self._dirty: set[str] = set(store.pending_workspaces())
        self._clearer = _PendingClearer(store)
        self._queues: dict[str, list[_Queued]] = {}
        self._queues_guard = threading.Lock()
        self._group = _GroupCommit(store, self._write_groups)
        # Bytes the create-time environment takes in the process's environment
        # block: the folder's budget is what is left of the total beside it.
        self._snapshot_bytes: dict[str, int] = {}

    def flush_pending(self) -> None:
        """Wait until satisfied pending marks are cleared (for exact reads of the marks)."""
        self._clearer.flush()

    # -- validation ----------------------------------------------------------

    def encode(self, env: Mapping[str, str]) -> dict[str, bytes]:
        """Encode and check every pair; InvalidBatch names each offending key."""
        problems: list[FormatError] = []
        out: dict[str, bytes] = {}
        for name, value in env.items():
            try:
                self.rules.check_name(name)
                out[name] = encode_value(name, value)
                self.rules.check_value(name, out[name])
            except FormatError as exc:
                problems.append(exc)
        if problems:
            raise InvalidBatch(problems)
        return out

    def snapshot_bytes(self, ws: str) -> int:
        """What the workspace's create-time environment takes (NAME=value\\0 each); cached."""
        size = self._snapshot_bytes.get(ws)
        if size is None:
            env = self.store.workspace_env(ws)
            size = sum(env_string_size(k, v.encode()) for k, v in env.items())
            self._snapshot_bytes[ws] = size
        return size

    def forget_workspace(self, ws: str) -> None:
        """The workspace was created or deleted: its snapshot may differ now."""
        self._snapshot_bytes.pop(ws, None)

    def _over_budget(self, where: str, folder: int, snapshot: int) -> None:
        """The folder plus the create-time environment must fit the budget: together
        they are the agent's environment, and past it every exec fails (E2BIG)."""
        if folder + snapshot > self.rules.total_budget:
            beside = f" beside its create-time environment's {snapshot}" if snapshot else ""
            raise InvalidBatch([FormatError(
                "*", f"{where}folder total {folder} bytes{beside} would exceed the budget of "
                f"{self.rules.total_budget} bytes", too_large=True)])

    def check_snapshot(self, env: Mapping[str, str]) -> None:
        """A new workspace's create-time environment and today's global secrets must fit together."""
        snapshot = sum(env_string_size(k, v.encode()) for k, v in env.items())
        folder = sum(env_string_size(m.name, b"\0" * m.size) for m in self.store.list_secrets(GLOBAL))
        self._over_budget("new workspace: ", folder, snapshot)

    def _fits(self, owner: str, sizes: dict[str, int]) -> None:
        # Inside the commit: push() has already cached the owner's snapshot size.
        folder = sum(env_string_size(k, b"") + n for k, n in sizes.items())
        self._over_budget("", folder, self._snapshot_bytes.get(owner, 0))

    def check_budget(self, owner: str, values: Mapping[str, bytes]) -> None:
        """The folder(s) this change reaches must stay within the total budget."""
        targets = [owner] if owner != GLOBAL else self.store.workspace_ids()
        for ws in targets:
            sizes = {m.name: env_string_size(m.name, b"\0" * m.size) for m in self.store.list_secrets(ws)}
            if owner == GLOBAL:
                own = {m.name for m in self.store.list_secrets(ws, inherit=False)}
                sizes.update({k: env_string_size(k, v) for k, v in values.items() if k not in own})
            else:
                sizes.update({k: env_string_size(k, v) for k, v in values.items()})
            self._over_budget(f"workspace {ws}: " if owner == GLOBAL else "", sum(sizes.values()), self.snapshot_bytes(ws))

    # -- changes -------------------------------------------------------------

    def push(self, owner: str, values: Mapping[str, bytes], *, actor: str,
             expected: Mapping[str, int] | None = None,
             idempotency: tuple[str, str, str, Callable[[Change], tuple[int, str]]] | None = None) -> WriteResult:
        """Store a new version of each key and write it through."""
        if owner == GLOBAL:
            self.check_budget(owner, values)
            change = self.store.put(GLOBAL, values, actor=actor, expected=expected, idempotency=idempotency)
            return self._fan_out(change)
        self.snapshot_bytes(owner)  # for _fits, inside the commit (cached after the first push)
        # Group commit: queue the push; whoever holds the workspace lock next
        # commits every queued push in one transaction and one folder write.
        item = _Queued(PutRequest(values, actor, expected, idempotency))
        with self._queues_guard:
            self._queues.setdefault(owner, []).append(item)
        with self.lock(owner):
            if not item.done:
                with self._queues_guard:
                    batch = self._queues.pop(owner, [])
                self._commit_batch(owner, batch)
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _commit_batch(self, ws: str, batch: list[_Queued]) -> None:
        """Commit queued pushes (caller holds the lock), write the merged batch, hand out results."""
        try:
            group = self._group.run(ws, [q.request for q in batch], self._fits)
            if group.written:
                failure = group.failure
            else:
                merged, upto = group.merged()
                failure = self._write_locked(ws, sorted(merged), upto, known=merged) if merged else None
        except BaseException as exc:
            for q in batch:
                q.error, q.done = exc, True
            raise
        for q, res in zip(batch, group.outcomes, strict=True):
            if isinstance(res, Change):
                q.result = WriteResult(res, {ws: failure} if failure else {})
            else:
                q.error = res
            q.done = True

    def _write_groups(self, groups: list[_Group]) -> None:
        """The group leader writes every group's folder in one batch. A folder this
        leaves unwritten (a lone push, a folder that needs a full rewrite, an
        unexpected error) its owner writes itself."""
        todo = {}
        for g in groups:
            merged, upto = g.merged()
            if merged:
                todo[g.ws] = (g, merged, upto)
        done = self._batch_write([(ws, merged, [], sorted(merged), upto) for ws, (_, merged, upto) in todo.items()])
        for ws, failure in done.items():
            g = todo[ws][0]
            g.written, g.failure = True, failure

    def _batch_write(self, writes: list[tuple[str, dict[str, bytes], list[str], list[str], float]]
                     ) -> dict[str, HostError | None]:
        """``host.apply_many`` for (workspace, values, keys to delete, names, upto); the callers
        hold the workspaces' locks. Returns {workspace: None (durable) or the HostError (left
        pending)} for the folders it wrote; the others (a full rewrite due, a missing folder, an
        unexpected error, a host without ``apply_many``, a batch of one) are the caller's to write."""
        apply_many = getattr(self.host, "apply_many", None)
        writes = [w for w in writes if w[0] not in self._dirty]
        if apply_many is None or len(writes) < 2:
            return {}
        t0 = time.perf_counter()
        results = apply_many([(ws, values, gone) for ws, values, gone, _, _ in writes])
        took = time.perf_counter() - t0
        self.on_batch(len(writes))
        done: dict[str, HostError | None] = {}
        for (ws, _, _, names, upto), res in zip(writes, results, strict=True):
            if res is None:
                done[ws] = None
                self.on_write(took)
                self._clearer.submit(ws, names, upto)
            elif isinstance(res, HostError) and not res.missing:
                done[ws] = res
                self._dirty.add(ws)
        return done

    def delete(self, owner: str, name: str, *, actor: str) -> WriteResult:
        if owner == GLOBAL:
            return self._fan_out(self.store.delete_secret(GLOBAL, name, actor=actor))
        with self.lock(owner):
            change = self.store.delete_secret(owner, name, actor=actor)
            failure = self._write_locked(owner, [name], change.at)
        return WriteResult(change, {owner: failure} if failure else {})

    def rollback(self, owner: str, name: str, version: int, *, actor: str) -> WriteResult:
        if owner == GLOBAL:
            return self._fan_out(self.store.rollback(GLOBAL, name, version, actor=actor))
        with self.lock(owner):
            change = self.store.rollback(owner, name, version, actor=actor)
            failure = self._write_locked(owner, [name], change.at)
        return WriteResult(change, {owner: failure} if failure else {})

    def materialise(self, ws: str) -> None:
        """Rewrite the folder from the store (global ∪ workspace). Raises HostError."""
        with self.lock(ws):
            self._materialise_locked(ws)

    def reconcile(self) -> dict[str, HostError]:
        """Materialise every workspace with pending marks (at startup)."""
        failures: dict[str, HostError] = {}
        for ws in self.store.pending_workspaces():
            try:
                self.materialise(ws)
            except HostError as exc:
                failures[ws] = exc
        return failures

    # -- internals -----------------------------------------------------------

    #: A global change is written to this many workspaces' folders per batch,
    #: their locks held together (taken in sorted order) for the batch only.
    fan_out_batch = 64

    def _fan_out(self, change: Change) -> WriteResult:
        failures: dict[str, HostError] = {}
        names = list(change.versions)
        wss = sorted(change.workspaces)
        for i in range(0, len(wss), self.fan_out_batch):
            chunk = wss[i:i + self.fan_out_batch]
            with ExitStack() as locks:
                for ws in chunk:
                    locks.enter_context(self.lock(ws))
                done = self._batch_write([self._fan_out_write(ws, names, change.at) for ws in chunk
                                          if ws not in self._dirty])
            failures.update({ws: f for ws, f in done.items() if f is not None})
            # The rest (a full rewrite due, a missing or busy folder, an unexpected error) one by
            # one, each under its own lock only: a stuck folder holds up no other workspace.
            for ws in chunk:
                if ws not in done:
                    with self.lock(ws):
                        failure = self._write_locked(ws, names, change.at)
                    if failure:
                        failures[ws] = failure
        return WriteResult(change, failures)

    def _fan_out_write(self, ws: str, names: list[str], upto: float
                       ) -> tuple[str, dict[str, bytes], list[str], list[str], float]:
        values = self._deliverable(ws, self.store.effective(ws, names))
        return ws, values, [n for n in names if n not in values], names, upto

    def _write_locked(self, ws: str, names: list[str], upto: float,
                      known: Mapping[str, bytes] | None = None) -> HostError | None:
        """Bring ``names`` in the folder in line with the store; the caller holds the lock."""
        try:
            if ws in self._dirty:
                self._materialise_locked(ws)
                return None
            if known is None:
                values = self._deliverable(ws, self.store.effective(ws, names))
                gone = [n for n in names if n not in values]
            else:
                values, gone = dict(known), []  # a workspace's own values win: no lookup needed
            t0 = time.perf_counter()
            self.host.apply(ws, values, gone)
            self.on_write(time.perf_counter() - t0)
            self._clearer.submit(ws, names, upto)
            return None
        except HostError as exc:
            if getattr(exc, "missing", False):  # the folder was deleted: write all of it, not just this batch
                try:
                    self._materialise_locked(ws)
                    return None
                except HostError as again:
                    return again  # marked dirty by _materialise_locked
            self._dirty.add(ws)
            return exc

    def _deliverable(self, ws: str, env: dict[str, bytes]) -> dict[str, bytes]:
        """``env`` without stored keys the rules refuse today (a name that
        became reserved in an upgrade): they are left out of the folder, by
        name in the log, instead of blocking every write to the workspace.
        ``DELETE`` still removes them from the store."""
        refused = [n for n in env if self.rules.is_reserved(n)]
        if not refused:
            return env
        log.warning("workspace %s: not writing stored keys the format rules now refuse: %s",
                    ws, ", ".join(sorted(refused)))
        return {k: v for k, v in env.items() if k not in refused}

    def _materialise_locked(self, ws: str) -> None:
        try:
            upto = self.store.clock()  # marks up to now are satisfied by what we read next
            env = self._deliverable(ws, self.store.effective(ws))
            t0 = time.perf_counter()
            self.host.replace_all(ws, env)
            self.on_write(time.perf_counter() - t0)
        except HostError:
            self._dirty.add(ws)
            raise
        self.store.clear_pending(ws, upto=upto)
        self._dirty.discard(ws)
