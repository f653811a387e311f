"""The secrets.d writer: atomic, durable, symlink-safe, serialised.

Layout it maintains (the Kubernetes Secret-volume layout, so one loader
reads both)::

    secrets.d/                 0700 owner
      load.sh                  the loader (0644: it holds no secret)
      ..data -> ..gen-00000042 the current generation, swapped by rename
      ..gen-00000042/          0700 owner, one complete set of values
        GITHUB_TOKEN           0600 owner, the raw value
        .load-cache.sh         0600 owner, the same values quoted for load.sh
      GITHUB_TOKEN -> ..data/GITHUB_TOKEN

Every change, one key or a batch, is a new generation: write every file of
the new set into a fresh folder, fsync, then point ``..data`` at it with a
single ``rename``. A reader resolves ``..data`` once and so sees the whole
old set or the whole new one. A crash at any instant leaves either the old
``..data`` (the half-written folder is an orphan that recovery removes) or
the new one (recovery finishes the link bookkeeping).

Security: this runs as root on the host while the workspace can write to
the same folder. Every operation works through a file descriptor of the
folder, opened component by component with ``O_NOFOLLOW`` below a trusted
``base``; files are created with ``O_EXCL | O_NOFOLLOW``; links and
folders planted by the workspace are replaced by ``rename`` (which never
follows) or removed with fd-relative calls. Nothing outside the folder is
written, chmod'ed or chown'ed.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import os
import re
import secrets
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from secretsd.format import loadcache
from secretsd.format.rules import (
    DEFAULT_GID,
    DEFAULT_UID,
    DIR_MODE,
    FILE_MODE,
    LOADER_NAME,
    FormatError,
    Rules,
    fingerprint,
    is_ignored_silently,
    safe_key,
)

DATA = "..data"
DATA_TMP = "..data_tmp"
GEN_PREFIX = "..gen-"
TMP_PREFIX = "..tmp-"
LOADER_MODE = 0o644
_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LOADER_VERSION_TAG = b"# secretsd-load-version: "
#: The loader cache when a root writer makes it: root's, readable by the
#: workspace's group (0640), see ``SecretsDir._cache_owner``.
CACHE_MODE_ROOT = 0o640
#: The loader cache differs from the files and yet nothing in the generation
#: is newer than it (a file put back with its old time): load.sh would export
#: the cached values. Only a write or `secretsd repair` fixes it.
STALE_CACHE_USED = "out of date though no file is newer: load.sh exports the cached values, not the files'"

#: A superseded generation stays this long so that a reader that resolved it
#: just before the swap can finish; ``MAX_OLD_GENERATIONS`` caps the count
#: under a burst of writes (the loader retries if one vanishes mid-read).
DEFAULT_GRACE = 5.0
MAX_OLD_GENERATIONS = 32


class SecretsDirError(Exception):
    """Base of the writer's errors. Messages name keys, never values."""


class WriteError(SecretsDirError):
    def __init__(self, key: str | None, reason: str, err: int | None = None) -> None:
        self.key = key
        self.reason = reason
        self.errno = err
        where = f"{safe_key(key)}: " if key else ""
        super().__init__(f"{where}{reason}")


class ConflictError(SecretsDirError):
    def __init__(self, key: str, expected: str | None, actual: str | None) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{safe_key(key)}: conflict: expected {expected or 'absent'}, found {actual or 'absent'}"
        )


class NotFound(SecretsDirError, KeyError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{safe_key(key)}: no such secret")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class LockTimeout(SecretsDirError):
    pass


class FolderMissing(SecretsDirError):
    pass


@dataclass(frozen=True)
class Entry:
    """What ``list`` shows: everything but the value."""

    name: str
    size: int
    sha8: str
    mtime: float
    mode: int
    uid: int
    gid: int
    source: str  # "generation" or "file" (a hand-made regular file)


def _oserror(key: str | None, action: str, exc: OSError) -> WriteError:
    code = errno.errorcode.get(exc.errno or 0, "E?")
    return WriteError(key, f"cannot {action}: {os.strerror(exc.errno or 0)} ({code})", exc.errno)


@functools.cache
def loader_source() -> bytes:
    return resources.files("secretsd.format").joinpath("sh/load.sh").read_bytes()


def _loader_version(data: bytes) -> int:
    for line in data.splitlines()[:5]:
        if line.startswith(LOADER_VERSION_TAG):
            try:
                return int(line[len(LOADER_VERSION_TAG):].strip())
            except ValueError:
                return 0
    return 0


@functools.lru_cache(maxsize=4096)  # every write of a busy folder looks at the same 30-odd names
def _gen_seq(name: str) -> int | None:
    if name.startswith(GEN_PREFIX):
        tail = name[len(GEN_PREFIX):]
        if tail.isascii() and tail.isdigit():  # not "..gen-٣": str.isdigit takes any script's digits
            return int(tail)
    return None


@dataclass
class _Plan:
    """What a write found under the lock and will make of the folder."""

    gen: str | None  # the current generation
    old: dict[str, bytes]  # its values
    new: dict[str, bytes]  # the set the write commits
    #: Every generation folder, name -> sequence, as found after recovery: the
    #: write needs no further listing for the next name or for collection.
    gens: dict[str, int]

    def after(self, written: str) -> dict[str, int]:
        """The generation folders once ``written`` (the next one) is swapped in."""
        return {**self.gens, written: _gen_seq(written) or 0}


def _gens(entries: Iterable[os.DirEntry[str]]) -> dict[str, int]:
    return {e.name: seq for e in entries if (seq := _gen_seq(e.name)) is not None}


# Writers in this process also take a thread lock: flock() is per open file
# description, which already serialises threads, but the lock keeps the
# common case cheap and fair.
_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()

#: Folder -> signature of the load.sh whose bytes were last found identical
#: to ours, so a write need not re-read it (see _ensure_loader).
_LOADER_OK: dict[str, tuple[int, ...]] = {}


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid)


def _thread_lock(key: str) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.Lock())


def empty_trash(trash: str | os.PathLike[str]) -> dict[str, str]:
    """Remove everything writers moved into ``trash`` (``SecretsDir(trash=)``).
    Returns what stayed: {entry name: why}, names only, never a value.

    The entries are generation folders the workspace could have tampered
    with, so nothing here follows a link: the trash itself is opened with
    ``O_NOFOLLOW`` and used through that descriptor only, and an entry with
    a mount point inside (``/proc/self/mountinfo``; a bind mount from the
    same filesystem looks like any folder to ``rm``) is left alone.
    ``rm -rf`` in a child process removes the rest: a removal is mostly
    waiting on the disk, but the Python work between those waits would
    take the GIL from the writers the trash exists to keep fast (measured:
    30 % more folder writes per second). What ``rm`` leaves, or all of it
    when ``rm`` cannot run, is retried in-process, fd-relative, which names
    the reason for each entry that still stays."""
    try:
        tfd = os.open(trash, _DIR_NOFOLLOW)
    except FileNotFoundError:
        return {}
    try:
        names = sorted(os.listdir(tfd))
        if not names:
            return {}
        stayed = dict.fromkeys(_holding_mounts(tfd, names), "a mount point inside it: unmount it")
        todo = [n for n in names if n not in stayed]
        for i in range(0, len(todo), 512):  # well under ARG_MAX
            if not _rm_rf(tfd, todo[i : i + 512]):
                break  # no rm, or no /proc: all of it in-process below
        left = set(os.listdir(tfd)) & set(todo)
        if left:
            stayed.update(_remove_here(tfd, sorted(left)))
        return stayed
    finally:
        os.close(tfd)


def _rm_rf(dir_fd: int, names: list[str]) -> bool:
    """``rm -rf`` of entries of the folder ``dir_fd`` in a child process (any depth; never
    follows a link). False when it could not run (no rm, no /proc); the caller checks
    what is left."""
    try:
        subprocess.run(["rm", "-rf", "--", *names], cwd=f"/proc/self/fd/{dir_fd}", pass_fds=(dir_fd,),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    except OSError:
        return False
    return True


def remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` from the folder ``dir_fd`` whatever it is (a file, a link, a tree
    of any depth), fd-relative, never following a link; absent is fine. The one
    removal every path here uses: a workspace user can plant any of these."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    try:
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based, never follows links
    except RecursionError:  # nested deeper than Python recurses (shutil.rmtree recurses before 3.12)
        _rm_rf(dir_fd, [name])
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        raise OSError(errno.ENOTEMPTY, f"cannot remove {name}: nested too deep") from None


def _holding_mounts(tfd: int, names: list[str]) -> set[str]:
    """The entries of the trash (fd) that have a mount point somewhere inside."""
    try:
        top = os.readlink(f"/proc/self/fd/{tfd}")
        with open("/proc/self/mountinfo", "rb") as fh:
            lines = fh.read().decode(errors="surrogateescape").splitlines()
    except OSError:
        return set()
    held = set()
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point.startswith(top + "/"):
            held.add(point[len(top) + 1 :].split("/", 1)[0])
    return held & set(names)


def _remove_here(tfd: int, names: list[str]) -> dict[str, str]:
    stayed = {}
    for name in names:
        try:
            remove_entry(tfd, name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            stayed[name] = os.strerror(exc.errno or 0)
    return stayed


class SecretsDir:
    """One secrets.d folder. Safe to use from many threads and processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        base: str | os.PathLike[str] | None = None,
        uid: int | None = None,
        gid: int | None = None,
        rules: Rules | None = None,
        lock_timeout: float = 30.0,
        grace: float = DEFAULT_GRACE,
        collect_on_write: bool = True,
        trash: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(os.path.abspath(path))
        # The parent is trusted by default (the caller named the path); a
        # given base says where untrusted territory begins.
        self._base_given = base is not None
        self.base = Path(os.path.abspath(base)) if base is not None else self.path.parent
        if self.path == self.base or self.base not in self.path.parents:
            raise ValueError(f"{self.path} is not below {self.base}")
        root = os.geteuid() == 0
        self.uid = uid if uid is not None else (DEFAULT_UID if root else os.geteuid())
        self.gid = gid if gid is not None else (DEFAULT_GID if root else os.getegid())
        self.rules = rules or Rules()
        self.lock_timeout = lock_timeout
        self.grace = grace
        # False: a write removes only generations over MAX_OLD_GENERATIONS,
        # and the caller runs collect() after the grace, off its hot path
        # (removing a folder costs journal work on the caller's latency).
        self.collect_on_write = collect_on_write
        # A folder on the same filesystem that the workspace never sees:
        # superseded generations are renamed into it under the lock instead
        # of removed there, and whoever passes it empties it off the lock
        # (``empty_trash``). Removing a generation frees its blocks, which
        # costs journal work and, on a nojournal ext4 mounted with
        # ``discard``, one synchronous discard per block; a rename costs none.
        self.trash = Path(trash) if trash is not None else None
        self.trashed = 0  # generations this writer moved to the trash
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ open

    def _open_dir(self, create: bool) -> int:
        """Open the folder without following any link below ``base``."""
        if create and not self._base_given:
            try:
                os.makedirs(self.base, mode=0o755, exist_ok=True)
            except OSError as exc:
                raise _oserror(None, f"create {self.base}", exc) from None
        try:
            fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _oserror(None, f"open {self.base}", exc) from None
        parts = self.path.relative_to(self.base).parts
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    try:
                        nfd = os.open(part, _DIR_NOFOLLOW, dir_fd=fd)
                    except FileNotFoundError:
                        if not create:
                            raise
                        try:  # created only when missing: the usual open costs no mkdir
                            os.mkdir(part, DIR_MODE if last else 0o755, dir_fd=fd)
                        except FileExistsError:
                            pass
                        nfd = os.open(part, _DIR_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise WriteError(
                            None, f"refusing {self.base.joinpath(*parts[: i + 1])}: not a real folder (a link?)"
                        ) from None
                    if exc.errno == errno.ENOENT:
                        raise FolderMissing(f"no such folder: {self.path} (run `secretsd init`)") from None
                    raise _oserror(None, f"open {self.path}", exc) from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextmanager
    def _locked(self, create: bool = True, *, wait: bool = True) -> Iterator[int]:
        """Folder fd, exclusively locked (flock on the folder itself).
        ``wait=False``: LockTimeout at once if anyone holds it."""
        timeout = self.lock_timeout if wait else 0.0
        tlock = _thread_lock(str(self.path))
        got = tlock.acquire(timeout=timeout) if wait else tlock.acquire(blocking=False)
        if not got:
            raise LockTimeout(f"{self.path}: another writer holds the lock")
        try:
            fd = self._open_dir(create)
            try:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise LockTimeout(f"{self.path}: another writer holds the lock") from None
                        time.sleep(0.002)
                self._fix_attrs(fd, None, DIR_MODE)
                yield fd
            finally:
                os.close(fd)  # closing releases the flock
        finally:
            tlock.release()

    # ------------------------------------------------------------ primitives

    def _fix_attrs(self, fd: int, key: str | None, mode: int, uid: int | None = None) -> None:
        """Mode and owner on the open fd: immune to umask and to link games."""
        uid = self.uid if uid is None else uid
        try:
            st = os.fstat(fd)
            if stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
            if (st.st_uid, st.st_gid) != (uid, self.gid):
                os.fchown(fd, uid, self.gid)
        except PermissionError as exc:
            if os.geteuid() == 0:
                raise _oserror(key, "set mode/owner", exc) from None
            # Unprivileged: can't chown to someone else; mode still fixed.

    def _write_file(self, dir_fd: int, name: str, data: bytes, mode: int, key: str | None,
                    mtime_ns: int | None = None, uid: int | None = None, *, sync: bool = True) -> None:
        # O_EXCL|O_NOFOLLOW: we only ever write files we just created.
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd
        )
        try:
            self._fix_attrs(fd, key, mode, uid)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _read_file(self, dir_fd: int, name: str, limit: int | None = None) -> bytes | None:
        """Bytes of a regular file, never through a link; None if unusable."""
        return self._read_file_stat(dir_fd, name, limit)[0]

    def _read_file_stat(self, dir_fd: int, name: str,
                        limit: int | None = None) -> tuple[bytes | None, os.stat_result | None]:
        """``_read_file`` and the file's fstat, taken before reading. ``limit``:
        the largest size read (default: one variable's)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            return None, None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, None  # a fifo or device planted to hang or trick us
            limit = self.rules.max_env_string if limit is None else limit
            if st.st_size > limit:
                self.warnings.append(f"{name}: larger than {limit} bytes, skipped")
                return None, None
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks), st
        finally:
            os.close(fd)

    @staticmethod
    def _fsync_dir(fd: int) -> None:
        os.fsync(fd)

    def _scan(self, fd: int) -> tuple[str | None, list[os.DirEntry[str]]]:
        entries = list(os.scandir(fd))
        try:
            target = os.readlink(DATA, dir_fd=fd)
        except OSError:
            target = None
        if target is not None and ("/" in target or not target.startswith("..") or target in (DATA, DATA_TMP)):
            target = None  # a planted link pointing anywhere else is not ours
        return target, entries

    @contextmanager
    def _opened_gen(self, fd: int, gen: str | None) -> Iterator[int | None]:
        """The generation folder's fd (never through a link), or None."""
        gfd = self._open_gen(fd, gen)
        try:
            yield gfd
        finally:
            if gfd is not None:
                os.close(gfd)

    def _is_key(self, name: str) -> bool:
        return not is_ignored_silently(name) and self.rules.is_key_name(name)

    def _values(self, dir_fd: int, names: Iterable[str]) -> dict[str, bytes]:
        values: dict[str, bytes] = {}
        for name in names:
            if self._is_key(name):
                data = self._read_file(dir_fd, name)
                if data is not None:
                    values[name] = data
        return values

    def _generation_values(self, fd: int, gen: str | None, *, intact: bool = False) -> dict[str, bytes]:
        """The values of generation ``gen``. ``intact``: FolderMissing unless it is
        there and its loader cache is the one written with the values it holds now
        (an incremental write would otherwise carry forward only what it finds, and
        drop the rest). A cache from a writer with other loader rules
        (an upgrade) counts as a difference too: one full rewrite, then it matches."""
        with self._opened_gen(fd, gen) as gfd:
            if gfd is None:
                if intact:
                    raise FolderMissing(f"{self.path}: the current generation is missing: it needs a full rewrite")
                return {}
            names = os.listdir(gfd)
            values = self._values(gfd, names)
            if intact:
                # The cache was written with the generation, from the same values: a key
                # removed, renamed, unreadable (a link, a fifo) or edited in place since,
                # or the cache gone, all show. A readable key it does not name shows too.
                cache = self._read_file(gfd, loadcache.CACHE_NAME, limit=4 * self.rules.total_budget + 65536)
                if cache != loadcache.render(values):
                    raise FolderMissing(f"{self.path}: the current generation differs from what was written: "
                                        "it needs a full rewrite")
            return values

    @staticmethod
    def _hand_names(entries: list[os.DirEntry[str]]) -> list[str]:
        """Regular files at the top: hand-made or hand-replaced secrets."""
        return [e.name for e in entries if not e.is_symlink() and e.is_file(follow_symlinks=False)]

    def _hand_files(self, entries: list[os.DirEntry[str]], fd: int) -> dict[str, bytes]:
        return self._values(fd, self._hand_names(entries))

    def _current(self, fd: int, scan: tuple[str | None, list[os.DirEntry[str]]] | None = None, *,
                 intact: bool = False) -> tuple[str | None, dict[str, bytes], dict[str, bytes]]:
        gen, entries = scan or self._scan(fd)
        return gen, self._generation_values(fd, gen, intact=intact), self._hand_files(entries, fd)

    # ------------------------------------------------------------- recovery

    def _recover(self, fd: int, scan: tuple[str | None, list[os.DirEntry[str]]] | None = None) -> list[str]:
        """Finish or undo whatever a killed writer left. Called under the lock;
        ``scan``: the caller's ``_scan`` of the folder, taken under it."""
        done: list[str] = []
        gen, entries = scan or self._scan(fd)
        names = {e.name: e for e in entries}
        if DATA_TMP in names:
            os.unlink(DATA_TMP, dir_fd=fd)
            done.append(f"removed {DATA_TMP}")
        if DATA in names and gen is None:
            # Not a link into this folder: never follow it, set it aside.
            self._remove(fd, DATA)
            done.append(f"removed foreign {DATA}")
        cur_seq = _gen_seq(gen) if gen else None
        for name, ent in names.items():
            seq = _gen_seq(name)
            # Newer than ..data: unfinished. As new as ..data under another name
            # ("..gen-1" beside "..gen-00000001"): never ours, and it would
            # make two generations with one number.
            orphan = name.startswith(TMP_PREFIX) or (
                seq is not None and name != gen and (cur_seq is None or seq >= cur_seq)
            )
            if orphan:
                self._remove(fd, name)
                done.append(f"removed unfinished {name}")
        with self._opened_gen(fd, gen) as gfd:
            keys = {n for n in os.listdir(gfd) if self._is_key(n)} if gfd is not None else set()
        for name, ent in names.items():
            if is_ignored_silently(name):
                continue
            if ent.is_symlink():
                try:
                    target = os.readlink(name, dir_fd=fd)
                except OSError:
                    continue
                ours = target == f"{DATA}/{name}"
                if ours and name not in keys:
                    os.unlink(name, dir_fd=fd)
                    done.append(f"removed stale link {name}")
                elif not ours:
                    os.unlink(name, dir_fd=fd)
                    done.append(f"removed foreign link {name}")
                    if name in keys:  # a key's own link was hijacked: give the key its link back
                        self._link(fd, name)
                        done.append(f"restored link {name}")
        for key in sorted(keys):
            if key not in names:
                self._link(fd, key)
                done.append(f"restored link {key}")
        if done:
            self._fsync_dir(fd)
        return done

    def _remove(self, fd: int, name: str) -> None:
        remove_entry(fd, name)

    def _collect(self, fd: int, *, excess_only: bool = False, gens: Mapping[str, int] | None = None) -> list[str]:
        """Remove superseded generations once no reader can still need them
        (``excess_only``: only those over MAX_OLD_GENERATIONS). ``gens``: the
        generation folders as the caller just left them under this lock (the
        current one highest), so that the common case lists nothing."""
        if excess_only and gens is not None:
            old = sorted((seq, name) for name, seq in gens.items())[:-1]
            if len(old) <= MAX_OLD_GENERATIONS:
                return []
            return self._remove_generations(fd, [name for _, name in old[: len(old) - MAX_OLD_GENERATIONS]])
        gen, entries = self._scan(fd)
        cur = _gen_seq(gen) if gen else None
        if cur is None:
            return []
        old = sorted(  # by name too: two old ones may share a number ("..gen-1", "..gen-00000001")
            ((seq, e) for e in entries if (seq := _gen_seq(e.name)) is not None and seq < cur),
            key=lambda pair: (pair[0], pair[1].name),
        )
        if not old or (excess_only and len(old) <= MAX_OLD_GENERATIONS):
            return []  # nothing to stat: the common case on every write
        now = time.time()
        # A generation was superseded when its successor was written: its
        # ctime (the mtime is backdated for the loader cache; ctime cannot be).
        current = next((e for e in entries if e.name == gen), None)
        if current is None:  # ..data dangles (the folder is being deleted under us): collect nothing
            return []
        if excess_only:  # the oldest over the cap go, whatever their age: nothing to stat
            return self._remove_generations(fd, [e.name for _, e in old[: len(old) - MAX_OLD_GENERATIONS]])
        successors = [e for _, e in old[1:]] + [current]
        due = []
        for i, ((_, ent), succ) in enumerate(zip(old, successors, strict=True)):
            try:
                since = now - succ.stat(follow_symlinks=False).st_ctime
            except FileNotFoundError:
                since = self.grace + 1
            if since > self.grace or len(old) - i > MAX_OLD_GENERATIONS:
                due.append(ent.name)
        return self._remove_generations(fd, due)

    def _remove_generations(self, fd: int, names: list[str]) -> list[str]:
        removed = []
        tfd = self._open_trash() if names else None
        try:
            for name in names:
                try:
                    if tfd is None or not self._to_trash(fd, tfd, name):
                        self._remove(fd, name)
                except OSError as exc:
                    # e.g. EBUSY from a file bind-mounted inside it: the
                    # change is committed; collection retries next time.
                    self.warnings.append(f"cannot collect {name}: {os.strerror(exc.errno or 0)}")
                    continue
                removed.append(f"collected {name}")
        finally:
            if tfd is not None:
                os.close(tfd)
        return removed

    def _open_trash(self) -> int | None:
        if self.trash is None:
            return None
        try:
            return os.open(self.trash, _DIR_NOFOLLOW)
        except OSError:
            return None  # gone or not a folder: generations are removed in place

    def _to_trash(self, fd: int, tfd: int, name: str) -> bool:
        """Move one generation into the trash (a random name: the trash is
        shared by folders); False when it must be removed in place instead."""
        try:
            os.rename(name, f"{name}.{secrets.token_hex(8)}", src_dir_fd=fd, dst_dir_fd=tfd)
        except FileNotFoundError:
            return True  # already gone
        except OSError:
            return False  # EXDEV (another filesystem), EBUSY (a mount inside it), ...
        self.trashed += 1
        return True

    # ---------------------------------------------------------- the commit

    def _link(self, fd: int, key: str) -> None:
        """Point KEY at ``..data/KEY`` by renaming a fresh link over it."""
        # Hashed, not the key itself: "..tmp-link-" + a 255-byte name would exceed NAME_MAX.
        tmp = f"{TMP_PREFIX}link-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        try:
            os.unlink(tmp, dir_fd=fd)
        except FileNotFoundError:
            pass
        try:
            os.symlink(f"{DATA}/{key}", tmp, dir_fd=fd)
            self._chown_link(fd, tmp)
            os.rename(tmp, key, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as exc:
            try:
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise WriteError(key, "cannot replace: a folder is in the way") from None
            raise _oserror(key, "link", exc) from None

    def _chown_link(self, fd: int, name: str) -> None:
        if os.geteuid() == 0:
            os.chown(name, self.uid, self.gid, dir_fd=fd, follow_symlinks=False)

    def _commit(self, fd: int, old_gen: str | None, old_values: Mapping[str, bytes], new: Mapping[str, bytes],
                gens: Mapping[str, int] | None = None) -> str:
        """Write ``new`` as the next generation and swap it in, durably.

        Order matters for readers and for crash recovery:
        1. the new generation folder is written and fsync'ed completely
           (unchanged values are hard links to the old generation's files:
           already durable, so a one-key change costs one file fsync);
        2. links for added keys are created (dangling into the old set, so a
           reader of the old generation never sees them);
        3. ``..data`` is swapped by one rename (the commit point), fsync'ed;
        4. links of removed keys are deleted.

        ``format.batch`` runs the same steps for many folders with the
        fsyncs of 1 and 3 left to one barrier each for the whole batch.
        """
        gen = self._write_generation(fd, old_gen, old_values, new, gens=gens)
        self._publish(fd, gen, old_values, new)
        self._finish(fd, gen, old_values, new)
        return gen

    def _write_generation(self, fd: int, old_gen: str | None, old_values: Mapping[str, bytes],
                          new: Mapping[str, bytes], *, sync: bool = True, gens: Mapping[str, int] | None = None) -> str:
        """Step 1: the next generation folder, complete; its name. ``sync=False``:
        nothing is fsync'ed (the caller's barrier must, before ``_publish``).
        ``gens``: the generation folders, if the caller listed them under this lock."""
        if gens is None:
            gens = _gens(self._scan(fd)[1])
        gen = f"{GEN_PREFIX}{max(gens.values(), default=0) + 1:08d}"
        # The cache and the files written with it share one backdated time:
        # any later edit of a file makes it newer than the cache.
        stamp = loadcache.stamp_ns()
        key_now: str | None = None
        ofd = self._open_gen(fd, old_gen)
        try:
            os.mkdir(gen, DIR_MODE, dir_fd=fd)
            gfd = os.open(gen, _DIR_NOFOLLOW, dir_fd=fd)
            try:
                self._fix_attrs(gfd, None, DIR_MODE)
                for key_now, value in new.items():
                    if ofd is not None and old_values.get(key_now) == value and self._reusable(ofd, key_now, stamp):
                        os.link(key_now, key_now, src_dir_fd=ofd, dst_dir_fd=gfd, follow_symlinks=False)
                    else:
                        self._write_file(gfd, key_now, value, FILE_MODE, key_now, stamp, sync=sync)
                key_now = None
                cache_mode, cache_uid = self._cache_owner()
                self._write_file(gfd, loadcache.CACHE_NAME, loadcache.render(new), cache_mode, None, stamp, cache_uid,
                                 sync=sync)
                # The folder too: a file renamed, linked or added into it by
                # hand later dates it after the cache (load.sh checks).
                os.utime(gfd, ns=(stamp, stamp))
                if sync:
                    self._fsync_dir(gfd)
            finally:
                os.close(gfd)
            # The folder entry itself becomes durable with the swap's fsync.
        except OSError as exc:
            self._remove(fd, gen)
            raise _oserror(key_now or next(iter(new), None), "write", exc) from None
        except BaseException:
            self._remove(fd, gen)
            raise
        finally:
            if ofd is not None:
                os.close(ofd)
        return gen

    def _publish(self, fd: int, gen: str, old_values: Mapping[str, bytes], new: Mapping[str, bytes], *,
                 sync: bool = True) -> None:
        """Steps 2 and 3: links for added keys, then the swap. On failure the
        old set stays and ``gen`` is removed. ``sync=False``: the swap is not
        fsync'ed (the caller's barrier must, before answering anyone)."""
        added = [k for k in new if k not in old_values]
        try:
            for key in added:
                self._link(fd, key)
            self._swap(fd, gen, sync=sync)
        except BaseException:
            # Not committed: undo the links and the folder; old set stays.
            for key in added:
                try:
                    if os.readlink(key, dir_fd=fd) == f"{DATA}/{key}":
                        os.unlink(key, dir_fd=fd)
                except OSError:
                    pass
            self._remove(fd, gen)
            raise

    def _finish(self, fd: int, gen: str, old_values: Mapping[str, bytes], new: Mapping[str, bytes]) -> None:
        """Step 4, after the swap is durable: links and old copies of removed keys go."""
        old_keys = set(old_values)
        for key in old_keys - set(new):
            try:
                os.unlink(key, dir_fd=fd)
            except FileNotFoundError:
                pass
        self._scrub(fd, old_keys - set(new), keep=gen)
        if os.geteuid() == 0:  # kept links chown'ed by someone (`chown -R`): give them back (lchown only)
            for key in old_keys & set(new):
                try:
                    st = os.stat(key, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_gid) != (self.uid, self.gid):
                        self._chown_link(fd, key)
                except OSError:
                    pass
        # No fsync needed here: a removed link that comes back after a crash
        # dangles, and recovery deletes it.

    def _cache_owner(self) -> tuple[int, int]:
        """(mode, uid) of the loader cache. A root writer gives it to root,
        readable by the workspace's group: load.sh in a root shell sources
        only a root-owned cache, so whoever owns the folder cannot get code
        run as root through it (docs/format.md, "The loader cache")."""
        return (CACHE_MODE_ROOT, 0) if os.geteuid() == 0 else (FILE_MODE, self.uid)

    @staticmethod
    def _open_gen(fd: int, gen: str | None) -> int | None:
        if gen is None:
            return None
        try:
            return os.open(gen, _DIR_NOFOLLOW, dir_fd=fd)
        except OSError:
            return None

    def _reusable(self, gfd: int, key: str, stamp: int) -> bool:
        """An old file may be shared only if it is ours as written: a regular
        file with the right mode and owner, not newer than the new cache
        (else it is copied afresh)."""
        try:
            st = os.stat(key, dir_fd=gfd, follow_symlinks=False)
        except OSError:
            return False
        return (
            stat.S_ISREG(st.st_mode)
            and stat.S_IMODE(st.st_mode) == FILE_MODE
            and (st.st_uid, st.st_gid) == (self.uid, self.gid)
            and st.st_mtime_ns <= stamp
        )

    def _swap(self, fd: int, gen: str, *, sync: bool = True) -> None:
        try:
            os.unlink(DATA_TMP, dir_fd=fd)
        except FileNotFoundError:
            pass
        try:
            os.symlink(gen, DATA_TMP, dir_fd=fd)
            self._chown_link(fd, DATA_TMP)
            os.rename(DATA_TMP, DATA, src_dir_fd=fd, dst_dir_fd=fd)  # the commit point
        except OSError as exc:
            raise _oserror(None, "swap generation", exc) from None
        if sync:
            self._fsync_dir(fd)

    def _ensure_loader(self, fd: int) -> None:
        src = loader_source()
        try:
            st = os.stat(LOADER_NAME, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and _LOADER_OK.get(str(self.path)) == _signature(st):
            return  # the very file whose bytes we checked: any write, chmod or chown changes ctime
        found = st
        cur, st = self._read_file_stat(fd, LOADER_NAME)
        # Any difference is rewritten, not only an older version: the
        # workspace user owns the folder, and the entrypoint's root pass
        # sources this file, so a tampered loader must not survive a write
        # (the control plane writes before every start).
        if cur == src and st is not None:
            if stat.S_IMODE(st.st_mode) == LOADER_MODE and (st.st_uid, st.st_gid) == (self.uid, self.gid):
                # Remember it only once its ctime is a second old: a change
                # after our fstat then gets a later ctime even where file
                # times are coarse (one clock tick).
                if st.st_ctime_ns < time.time_ns() - 1_000_000_000:
                    _LOADER_OK[str(self.path)] = _signature(st)
                return
        tmp = f"{TMP_PREFIX}{LOADER_NAME}"
        self._remove(fd, tmp)
        if found is not None and stat.S_ISDIR(found.st_mode):
            # A folder made at its name would make the rename below fail (EISDIR) at every write.
            self._remove(fd, LOADER_NAME)
        try:
            self._write_file(fd, tmp, src, LOADER_MODE, LOADER_NAME)
            os.rename(tmp, LOADER_NAME, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as exc:
            self._remove(fd, tmp)
            raise _oserror(LOADER_NAME, "install", exc) from None
        self._fsync_dir(fd)

    def _change(
        self,
        update: Mapping[str, bytes] | None = None,
        delete: Iterable[str] = (),
        *,
        replace: bool = False,
        expected: Mapping[str, str | None] | None = None,
        missing_ok: bool = True,
        must_exist: bool = False,
    ) -> None:
        update = self._checked(update)
        with self._locked(create=not must_exist) as fd:
            plan = self._plan(fd, update, delete, replace=replace, expected=expected, missing_ok=missing_ok,
                              intact=must_exist)
            if plan is not None:
                gen = self._commit(fd, plan.gen, plan.old, plan.new, plan.gens)
                self._collect(fd, excess_only=not self.collect_on_write, gens=plan.after(gen))

    def _checked(self, update: Mapping[str, bytes] | None) -> dict[str, bytes]:
        """The update, refused before any lock is taken if a pair breaks the rules."""
        update = dict(update or {})
        problems = self.rules.problems(update)
        if problems:
            raise problems[0]
        return update

    def _plan(
        self,
        fd: int,
        update: Mapping[str, bytes],
        delete: Iterable[str] = (),
        *,
        replace: bool = False,
        expected: Mapping[str, str | None] | None = None,
        missing_ok: bool = True,
        intact: bool = False,
    ) -> _Plan | None:
        """Under the lock: recover, then what the change makes of the folder,
        or None when the folder already holds exactly that. The folder is
        listed once (again only if recovery or adoption changed it).

        ``intact``: the caller changes a folder it believes holds a known set
        (the control plane's write-through): FolderMissing, for a full rewrite,
        when the folder cannot be trusted to hold it: ``..data`` missing or not
        ours (dangling, pointing elsewhere), its generation gone or not a
        folder, a key in it unreadable (replaced by a link or a fifo), or the
        generation no longer what was written (``_generation_values``). The
        ``..data`` check comes before recovery, which would set a foreign
        ``..data`` aside and leave an empty folder to build on."""
        delete = list(delete)
        scan = self._scan(fd)
        if intact and (scan[0] is None or _gen_seq(scan[0]) is None):
            raise FolderMissing(f"{self.path}: ..data is missing or not ours: it needs a full rewrite")
        if self._recover(fd, scan):
            scan = self._scan(fd)
        self._ensure_loader(fd)  # touches load.sh only: the listing stays good
        gen, gen_values, hand = self._current(fd, scan, intact=intact)
        hand, refused = self._split_hand(hand)
        for key, reason in refused.items():
            if not replace:
                raise FormatError(key, f"hand-made file: {reason}; fix or remove it")
            os.unlink(key, dir_fd=fd)  # the folder becomes exactly `update` anyway
        if replace:  # also those too large to read at all
            for key in self._hand_names(scan[1]):
                if key not in hand and key not in refused and self._is_key(key):
                    os.unlink(key, dir_fd=fd)
        if hand:
            # Adopt hand-made files first, values unchanged, so that the
            # real change below is one swap.
            self._adopt(fd, gen, gen_values, hand)
            scan = self._scan(fd)
            gen, gen_values, hand = self._current(fd, scan, intact=intact)
        current = gen_values
        for key, want in (expected or {}).items():
            have = current.get(key)
            have_fp = hashlib.sha256(have).hexdigest() if have is not None else None
            if want is None and have_fp is None:
                continue
            if want is None or have_fp is None or not have_fp.startswith(want.lower()):
                raise ConflictError(key, want, have_fp[:8] if have_fp else None)
        if replace:
            new = dict(update)
        else:
            for key in delete:
                if key not in current and not missing_ok:
                    raise NotFound(key)
            gone = set(delete)
            new = {k: v for k, v in current.items() if k not in gone}
            new.update(update)
        self.rules.check_total(new)
        if new == current and gen is not None and not self._drifted(fd, gen, current):
            return None  # nothing to do; still durable
        return _Plan(gen, current, new, _gens(scan[1]))

    def _split_hand(self, hand: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, str]]:
        """Hand-made files the rules accept, and {name: why} for the others
        (a NUL byte, too large): those are never copied into a generation."""
        good: dict[str, bytes] = {}
        refused: dict[str, str] = {}
        for key, value in hand.items():
            try:
                self.rules.check_value(key, value)
            except FormatError as exc:
                refused[key] = exc.reason
            else:
                good[key] = value
        return good, refused

    def _adopt(self, fd: int, gen: str | None, gen_values: dict[str, bytes], hand: dict[str, bytes]) -> None:
        """Fold hand-made regular files into a generation and link them."""
        self._commit(fd, gen, gen_values, {**gen_values, **hand})
        for key in hand:
            self._link(fd, key)
        self._fsync_dir(fd)

    def _scrub(self, fd: int, keys: Iterable[str], keep: str) -> None:
        """Remove deleted keys from superseded generations at once, so a
        revoked value does not linger for the grace period. A reader of an
        old generation sees the file vanish and starts over on ``..data``."""
        keys = list(keys)
        if not keys:
            return
        _, entries = self._scan(fd)
        for ent in entries:
            if _gen_seq(ent.name) is None or ent.name == keep:
                continue
            with self._opened_gen(fd, ent.name) as gfd:
                if gfd is None:
                    continue
                for key in [*keys, loadcache.CACHE_NAME]:  # the cache holds the values too
                    try:
                        os.unlink(key, dir_fd=gfd)
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        self.warnings.append(f"cannot scrub {key} from {ent.name}: {os.strerror(exc.errno or 0)}")

    def _drifted(self, fd: int, gen: str, values: Mapping[str, bytes]) -> bool:
        """Mode, owner or type of the current generation changed by someone,
        or its loader cache no longer matches ``values`` (its files)."""
        gfd = self._open_gen(fd, gen)
        if gfd is None:
            return True
        try:
            st = os.fstat(gfd)
            if stat.S_IMODE(st.st_mode) != DIR_MODE or (st.st_uid, st.st_gid) != (self.uid, self.gid):
                return True
            cache_want = (*self._cache_owner(), self.gid)
            for ent in os.scandir(gfd):
                st = ent.stat(follow_symlinks=False)
                want = cache_want if ent.name == loadcache.CACHE_NAME else (FILE_MODE, self.uid, self.gid)
                if not stat.S_ISREG(st.st_mode) or (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != want:
                    return True
            return self._cache_problem(gfd, values) is not None
        finally:
            os.close(gfd)

    def _cache_problem(self, gfd: int, values: Mapping[str, bytes]) -> str | None:
        """Why load.sh would not take every value from the cache, or
        ``STALE_CACHE_USED`` when it would, but they differ from the files."""
        # The whole folder's values, quoted (a ' takes 4 bytes): over one variable's limit.
        data, st = self._read_file_stat(gfd, loadcache.CACHE_NAME, limit=4 * self.rules.total_budget + 65536)
        if data is None or st is None:
            try:
                os.stat(loadcache.CACHE_NAME, dir_fd=gfd, follow_symlinks=False)
            except FileNotFoundError:
                return "missing"
            return "not a regular file (load.sh never sources a link)"
        cached = st.st_mtime_ns
        try:
            newer = sorted(n for n in values if os.stat(n, dir_fd=gfd, follow_symlinks=False).st_mtime_ns > cached)
            if os.fstat(gfd).st_mtime_ns > cached:
                newer.append("the generation folder")
        except OSError:
            return "changing (a file vanished)"
        if newer:
            return f"older than {', '.join(newer)} (edited by hand)"
        if data != loadcache.render(values):
            return STALE_CACHE_USED
        return None

    def cache_problem(self) -> str | None:
        """Why load.sh would read some files instead of the generation's
        cache (slower, same values), ``STALE_CACHE_USED``, or None (doctor
        reports it)."""
        fd = self._open_dir(create=False)
        try:
            gen, _ = self._scan(fd)
            if gen is None or _gen_seq(gen) is None:
                return None  # no generation, or not ours (a Kubernetes volume)
            with self._opened_gen(fd, gen) as gfd:
                if gfd is None:
                    return None
                return self._cache_problem(gfd, self._values(gfd, os.listdir(gfd)))
        finally:
            os.close(fd)

    # ------------------------------------------------------------ public API

    def init(self) -> None:
        """Create the folder (0700) and install or upgrade load.sh."""
        with self._locked(create=True) as fd:
            self._recover(fd)
            self._ensure_loader(fd)

    def set(self, name: str, value: bytes, *, expected: str | None | type[Ellipsis] = ...) -> None:
        """Set one key. ``expected``: sha256 hex prefix it must replace, or None for "absent"."""
        exp = None if expected is ... else {name: expected}
        self._change({name: value}, expected=exp)

    def apply(
        self,
        set: Mapping[str, bytes] | None = None,  # noqa: A002 - reads well at call sites
        delete: Iterable[str] = (),
        *,
        expected: Mapping[str, str | None] | None = None,
        must_exist: bool = False,
    ) -> None:
        """All-or-nothing batch. Deleting an absent key is not an error here.
        ``must_exist``: FolderMissing instead of creating a folder that is gone or
        has no generation, or of building on a damaged one (``_plan``'s
        ``intact``): a caller that can rewrite it whole should."""
        self._change(set, delete, expected=expected, must_exist=must_exist)

    def replace_all(self, env: Mapping[str, bytes]) -> None:
        """Make the folder hold exactly ``env`` (materialisation from a store)."""
        self._change(env, replace=True)

    def delete(self, *names: str) -> None:
        """Delete keys atomically; NotFound if any is absent (nothing deleted)."""
        self._change(None, names, missing_ok=False)

    def repair(self) -> list[str]:
        """Recover from a killed writer, fix drift, reinstall load.sh."""
        with self._locked(create=False) as fd:
            done = self._recover(fd)
            done += self._collect(fd)
            self._ensure_loader(fd)
            gen, gen_values, hand = self._current(fd)
            hand, refused = self._split_hand(hand)
            done += [f"left hand-made file {k}: {why} (fix or remove it)" for k, why in sorted(refused.items())]
            if hand:
                self._adopt(fd, gen, gen_values, hand)
                done.append(f"adopted hand-made files: {', '.join(sorted(hand))}")
                gen, gen_values, hand = self._current(fd)
            if gen is not None and self._drifted(fd, gen, gen_values):
                self._commit(fd, gen, {}, gen_values)
                done.append("rewrote generation to fix mode/owner drift or its loader cache")
            return done

    def collect(self) -> list[str]:
        """Remove generations superseded longer than the grace period. The
        control plane calls this after the grace; writes also do it."""
        with self._locked(create=False) as fd:
            return self._collect(fd)

    def read_all(self) -> dict[str, bytes]:
        """The set a loader would export now (generation, then hand files)."""
        fd = self._open_dir(create=False)
        try:
            gen, gen_values, hand = self._current(fd)
            return {**gen_values, **hand}
        finally:
            os.close(fd)

    def get(self, name: str) -> bytes:
        values = self.read_all()
        if name not in values:
            raise NotFound(name)
        return values[name]

    def list(self) -> list[Entry]:
        fd = self._open_dir(create=False)
        try:
            gen, entries = self._scan(fd)
            out: dict[str, Entry] = {}
            with self._opened_gen(fd, gen) as gfd:
                if gfd is not None:
                    out.update(self._entries(gfd, os.listdir(gfd), "generation"))
            out.update(self._entries(fd, self._hand_names(entries), "file"))
            return [out[k] for k in sorted(out)]
        finally:
            os.close(fd)

    def _entries(self, dir_fd: int, names: Iterable[str], source: str) -> dict[str, Entry]:
        out = {}
        for name, data in self._values(dir_fd, names).items():
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            out[name] = Entry(
                name, len(data), fingerprint(data), st.st_mtime, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, source
            )
        return out

    def skipped_names(self) -> list[str]:
        """Names on disk that loaders skip with a warning (not valid names)."""
        fd = self._open_dir(create=False)
        try:
            gen, entries = self._scan(fd)
            names = {e.name for e in entries if not e.is_symlink()}
            with self._opened_gen(fd, gen) as gfd:
                if gfd is not None:
                    names |= set(os.listdir(gfd))
            return sorted(n for n in names if not is_ignored_silently(n) and not self._is_key(n))
        finally:
            os.close(fd)
