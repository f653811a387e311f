"""Host targets: where a workspace's secrets.d folder lives and how it is written.

The routes and the service only see ``HostTarget``. ``LocalHost`` writes the
folders in this machine's data directory; a remote host agent (the writer
behind an authenticated API on another machine) implements the same four
methods and plugs in unchanged, and may add ``apply_many``
(``BatchHostTarget``) to take several workspaces' writes in one call.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from secretsd.format.batch import FolderBusy, FolderChange, apply_batch
from secretsd.format.durability import BatchSync
from secretsd.format.fshints import mark_topdir
from secretsd.format.rules import FormatError, Rules, safe_key
from secretsd.format.writer import (
    DEFAULT_GRACE,
    FolderMissing,
    LockTimeout,
    SecretsDir,
    SecretsDirError,
    WriteError,
    empty_trash,
    remove_entry,
)

_log = logging.getLogger("secretsd.controlplane")

#: errnos that mean "try again later" (503) rather than "this host is broken" (502).
_TRANSIENT = {errno.EBUSY, errno.EAGAIN, errno.ENOSPC, errno.EDQUOT, errno.EINTR, errno.ETIMEDOUT}


class HostError(Exception):
    """Writing a workspace folder failed. Carries the workspace, key and reason; never a value."""

    def __init__(self, workspace: str, reason: str, *, key: str | None = None, transient: bool = False,
                 missing: bool = False) -> None:
        self.workspace = workspace
        self.reason = reason
        self.key = key
        self.transient = transient
        self.missing = missing  # the folder is gone: a batch alone would not restore the other keys
        super().__init__(f"workspace {workspace}: {f'{safe_key(key)}: ' if key else ''}{reason}")


#: One workspace's write in a batch: (workspace, keys to set, keys to delete).
Write = tuple[str, Mapping[str, bytes], Sequence[str]]


@runtime_checkable
class HostTarget(Protocol):
    def configs_dir(self, workspace: str) -> Path:
        """The folder mounted at /configs in the workspace (as the runtime sees it)."""

    def apply(self, workspace: str, set: Mapping[str, bytes], delete: Iterable[str]) -> None:  # noqa: A002
        """One atomic, durable batch. Raises HostError."""

    def replace_all(self, workspace: str, env: Mapping[str, bytes]) -> None:
        """Make the folder hold exactly ``env`` (materialisation). Raises HostError."""

    def remove(self, workspace: str) -> None:
        """Forget the workspace's host folder entirely."""


@runtime_checkable
class BatchHostTarget(HostTarget, Protocol):
    """A host that can write many workspaces' folders at once, cheaper than one
    by one (the service uses it when it has several pushes at hand)."""

    def apply_many(self, writes: Sequence[Write]) -> list[Exception | None]:
        """``apply`` for each write, in order: None when durable, a HostError when
        that write failed, any other exception when it was not tried (e.g. the
        folder was busy: the caller writes it with ``apply``)."""


class LocalHost:
    """``DATA/workspaces/<id>/configs/secrets.d`` on this machine, via the crash-safe writer."""

    def __init__(self, data_dir: Path, *, rules: Rules | None = None, lock_timeout: float = 30.0,
                 uid: int | None = None, gid: int | None = None, background_collect: bool = True,
                 grace: float = DEFAULT_GRACE, sync: BatchSync | None = None) -> None:
        self.base = Path(data_dir).resolve() / "workspaces"
        self.rules = rules or Rules()
        self.lock_timeout = lock_timeout
        self.uid, self.gid = uid, gid
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o711)
        mark_topdir(self.base)  # a block group per workspace folder (format.fshints)
        self.grace = grace  # how long a superseded generation stays for readers still in it
        self._collector = _Collector(self, grace) if background_collect else None
        # Superseded generations leave the folders by rename and are removed
        # here, off every lock and every push's latency (writer: SecretsDir(trash=)).
        self._trash = _Trash(Path(data_dir).resolve() / "trash") if background_collect else None
        self.sync = sync or BatchSync()  # how apply_many's folders share their fsyncs

    def configs_dir(self, workspace: str) -> Path:
        # Callers validate ids; this is a second line of defence.
        if "/" in workspace or workspace in ("", ".", ".."):
            raise HostError(workspace[:80], "invalid workspace id")
        return self.base / workspace / "configs"

    def _dir(self, workspace: str, *, collect_on_write: bool = True) -> SecretsDir:
        return SecretsDir(
            self.configs_dir(workspace) / "secrets.d", base=self.base, uid=self.uid, gid=self.gid,
            rules=self.rules, lock_timeout=self.lock_timeout, grace=self.grace,
            collect_on_write=collect_on_write, trash=self._trash.path if self._trash else None,
        )

    def _writer(self, workspace: str) -> tuple[SecretsDir, float]:
        """The writer for one write: collection left to the background collector unless it is due."""
        c = self._collector
        started = time.monotonic()
        return self._dir(workspace, collect_on_write=c is None or c.overdue(workspace)), started

    def _wrote(self, workspace: str, sd: SecretsDir, started: float) -> None:
        if self._collector is not None:
            self._collector.superseded(workspace, collected_at=started if sd.collect_on_write else None)
        self._trashed(sd)

    def _trashed(self, sd: SecretsDir) -> None:
        if sd.trashed and self._trash is not None:
            self._trash.kick()

    def apply(self, workspace: str, set: Mapping[str, bytes], delete: Iterable[str]) -> None:  # noqa: A002
        sd, started = self._writer(workspace)
        with _translated(workspace):
            sd.apply(set=set, delete=list(delete), must_exist=True)  # a wiped folder: HostError(missing)
        self._wrote(workspace, sd, started)

    def apply_many(self, writes: Sequence[Write]) -> list[Exception | None]:
        """Every write at once, sharing two durability barriers (``format.batch``)."""
        results: list[Exception | None] = [None] * len(writes)
        todo: list[tuple[int, SecretsDir, float]] = []
        for i, (ws, _set, _delete) in enumerate(writes):
            try:
                sd, started = self._writer(ws)
            except HostError as exc:
                results[i] = exc
                continue
            todo.append((i, sd, started))
        done = apply_batch([FolderChange(sd, writes[i][1], list(writes[i][2]), must_exist=True)
                            for i, sd, _ in todo], self.sync)
        for (i, sd, started), exc in zip(todo, done, strict=True):
            ws = writes[i][0]
            if exc is None:
                self._wrote(ws, sd, started)
            elif isinstance(exc, FolderBusy):
                results[i] = exc  # not tried: the caller writes it alone (apply waits for the lock)
            else:
                results[i] = host_error(ws, exc) or exc
        return results

    def replace_all(self, workspace: str, env: Mapping[str, bytes]) -> None:
        sd, started = self._writer(workspace)
        with _translated(workspace):
            sd.replace_all(env)
        self._wrote(workspace, sd, started)

    def remove(self, workspace: str) -> None:
        if self._collector is not None:
            self._collector.forget(workspace)
        name = self.configs_dir(workspace).parent.name
        fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            remove_entry(fd, name)  # fd-relative, never follows a link, any depth
        finally:
            os.close(fd)

    def secrets_dir(self, workspace: str) -> SecretsDir:
        """The writer for one folder (tests and tools read it back with it)."""
        return self._dir(workspace)


class _Collector:
    """Removes superseded generations off the request path, once their grace has passed.

    The writer keeps a superseded generation for ``grace`` seconds (a reader
    may still be in it) and, by default, each write removes the ones older
    than that: an ``rmtree`` on the write's latency, under the folder lock.
    Here a write leaves that to this thread, which runs ``collect()`` for a
    workspace shortly after its oldest superseded generation passes the
    grace, unless a write of that workspace comes first: a write still
    collects inline (as the writer always did) whenever a generation of its
    folder has passed the grace, so a write never leaves one behind it. A
    workspace written more often than every ``grace`` seconds thus costs what
    it did; the usual one (a push now and then) no longer pays an ``rmtree``
    on its next push. The writer still removes generations over its cap.
    """

    margin = 0.05  # a little after the grace: the writer compares file times
    lag = 0.5  # the thread waits this much longer, so that a busy workspace's next write does it instead

    def __init__(self, host: LocalHost, grace: float = DEFAULT_GRACE) -> None:
        self.host = host
        self.grace = grace
        self._cv = threading.Condition()
        self._writes: dict[str, deque[float]] = {}  # workspace -> times generations were superseded
        self._failed: set[str] = set()  # collect failed: the next write of these collects inline
        self._thread: threading.Thread | None = None

    def superseded(self, ws: str, *, collected_at: float | None = None) -> None:
        """A write superseded a generation; ``collected_at``: that write collected inline, started then."""
        with self._cv:
            times = self._writes.setdefault(ws, deque())
            if collected_at is not None:
                self._failed.discard(ws)
                self._drop(times, collected_at)
            first = not times
            times.append(time.monotonic())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="secretsd-collect", daemon=True)
                self._thread.start()
            elif first:
                # Wake the thread only when this workspace had nothing pending: otherwise its
                # earliest due time did not move, and a wake per push is a thread switch per push.
                self._cv.notify()

    def overdue(self, ws: str) -> bool:
        with self._cv:
            if ws in self._failed:
                return True
            times = self._writes.get(ws)
            return bool(times) and time.monotonic() > times[0] + self.grace + self.margin  # type: ignore[index]

    def forget(self, ws: str) -> None:
        with self._cv:
            self._writes.pop(ws, None)
            self._failed.discard(ws)

    def _drop(self, times: deque[float], collected_at: float) -> None:
        """Generations superseded ``grace`` before a collect started are gone after it."""
        while times and times[0] + self.grace + self.margin <= collected_at:
            times.popleft()

    def _due(self) -> tuple[list[str], float | None]:
        now = time.monotonic()
        due, wake = [], None
        for ws, times in self._writes.items():
            if not times:
                continue
            at = times[0] + self.grace + self.margin + self.lag
            if at <= now:
                due.append(ws)
            elif wake is None or at < wake:
                wake = at
        return due, wake

    def _run(self) -> None:
        while True:
            with self._cv:
                due, wake = self._due()
                while not due:
                    if wake is None:  # nothing left to collect: the thread ends, the next write starts one
                        self._thread = None
                        return
                    self._cv.wait(max(0.0, wake - time.monotonic()))
                    due, wake = self._due()
            for ws in due:
                started = time.monotonic()
                failed = False
                try:
                    sd = self.host._dir(ws)
                    sd.collect()
                    failed = bool(sd.warnings)  # e.g. EBUSY on a generation
                    self.host._trashed(sd)
                except Exception:  # noqa: BLE001 - gone, locked, EBUSY: the next write collects inline
                    failed = True
                with self._cv:
                    times = self._writes.get(ws)
                    if times is None:  # forgotten meanwhile
                        continue
                    if failed:
                        self._failed.add(ws)
                    self._drop(times, started)
                    if not times:
                        del self._writes[ws]


class _Trash:
    """Empties ``DATA/trash`` in a thread of its own: the generations writers moved there.

    ``DATA/trash`` (0700) is outside every workspace's view and on the same
    filesystem as the folders (else the writer removes in place). A kick
    starts the thread if none runs; it empties the trash until no kick came
    during a pass, then ends. Leftovers of a stopped server go at the first
    kick after a restart (the constructor gives one). If ``DATA/trash`` is
    anything but a real folder (a link, a file), it is not used at all:
    generations are removed in place and the log says why.
    """

    def __init__(self, path: Path) -> None:
        self.path: Path | None = path
        self._lock = threading.Lock()
        self._again = False
        self._thread: threading.Thread | None = None
        self._reported: set[str] = set()  # entries whose staying was logged (once each)
        self.empty = empty_trash  # one pass over the trash: {entry: why it stayed}
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:  # ELOOP (a link), ENOTDIR (a file), ...
            _log.warning("%s is not a usable folder (%s): superseded generations are removed in place; "
                         "remove it and restart to use it", path, os.strerror(exc.errno or 0))
            self.path = None
            return
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
        self.kick()

    def kick(self) -> None:
        if self.path is None:
            return
        with self._lock:
            self._again = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="secretsd-trash", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        assert self.path is not None
        while True:
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False
            try:
                stayed = self.empty(self.path)
            except OSError as exc:  # the trash itself unusable (replaced meanwhile): writers then remove in place
                stayed = {str(self.path): os.strerror(exc.errno or 0)}
            for name, why in sorted(stayed.items()):
                if name not in self._reported:  # once per entry, not on every pass
                    _log.warning("cannot remove %s from %s: %s", name, self.path, why)  # names only, never a value
            self._reported = set(stayed)

    def wait_empty(self, timeout: float = 10.0) -> bool:
        """For tests and tools: True once no pass runs or is due."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._thread is None:
                    return True
            time.sleep(0.005)
        return False


def host_error(ws: str, exc: BaseException) -> HostError | None:
    """The writer's error as a HostError (names and reasons only), or None for anything else."""
    if isinstance(exc, HostError):
        return exc
    if isinstance(exc, FolderMissing):
        return HostError(ws, "the folder is missing: it needs a full rewrite", missing=True)
    if isinstance(exc, LockTimeout):
        return HostError(ws, "the folder is locked by another writer", transient=True)
    if isinstance(exc, WriteError):
        return HostError(ws, exc.reason, key=exc.key, transient=exc.errno in _TRANSIENT)
    if isinstance(exc, FormatError):
        return HostError(ws, exc.reason, key=exc.key)
    if isinstance(exc, SecretsDirError):
        return HostError(ws, str(exc))
    if isinstance(exc, OSError):
        code = errno.errorcode.get(exc.errno or 0, "E?")
        return HostError(ws, f"{os.strerror(exc.errno or 0)} ({code})", transient=exc.errno in _TRANSIENT)
    return None


class _translated:
    """Map the writer's errors to HostError; names and reasons only."""

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, _tb: object) -> bool:
        err = host_error(self.workspace, exc) if exc is not None else None
        if err is not None:
            raise err from None
        return False
