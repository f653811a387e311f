"""The Python loader: load.sh's semantics for Python entrypoints.

    from secretsd.loader import load_into
    load_into()          # os.environ now holds every secret, byte-exact

Same rules as ``load.sh`` (the shared table in tests/format/cases.py keeps
them in step): hand-made regular files at the top win, then the keys of the
generation ``..data`` points at, resolved once; invalid, reserved, too large
or unreadable entries are skipped with a warning naming the file; values
override what the environment had. Never raises for a missing or unreadable
folder: a loader must not stop a workspace from booting.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from secretsd.format.rules import DEFAULT_DIR, LOADER_RESERVED, MAX_ENV_STRING, FormatError, Rules, is_ignored_silently

_DATA = "..data"


@dataclass
class LoadResult:
    values: dict[str, bytes] = field(default_factory=dict, repr=False)  # never in a log line
    warnings: list[str] = field(default_factory=list)


def _read(path: str, name: str, result: LoadResult) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_ENV_STRING + 1)
    except FileNotFoundError:
        return None
    except OSError:
        result.warnings.append(f"skipping {name}: cannot read")
        return None
    if len(name) + 1 + len(data) + 1 > MAX_ENV_STRING:
        result.warnings.append(f"skipping {name}: value larger than {MAX_ENV_STRING} bytes")
        return None
    if b"\0" in data:
        result.warnings.append(f"skipping {name}: value contains a NUL byte")
        return None
    return data


def _valid(name: str, rules: Rules, result: LoadResult) -> bool:
    if is_ignored_silently(name):
        return False
    try:
        rules.check_name(name)
    except FormatError as exc:
        result.warnings.append(f"skipping {exc}")
        return False
    return True


class _Vanished(Exception):
    """A generation was collected while we read it."""


def read_dir(path: str | os.PathLike[str] | None = None) -> LoadResult:
    """What the loader would export from ``path`` (default: $SECRETSD_DIR)."""
    folder = os.fspath(path) if path is not None else os.environ.get("SECRETSD_DIR") or DEFAULT_DIR
    # A writer may collect an old generation mid-read: start over (bounded);
    # a later generation is complete.
    for _ in range(3):
        try:
            return _read_once(folder)
        except _Vanished:
            continue
    return _read_once(folder, tolerate=True)


def _read_once(folder: str, tolerate: bool = False) -> LoadResult:
    rules = Rules(reserved=LOADER_RESERVED)  # what load.sh refuses, whatever a writer allows
    result = LoadResult()
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return result
    except OSError:
        result.warnings.append(f"cannot read {folder}")
        return result
    hand: set[str] = set()
    for name in names:
        full = os.path.join(folder, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not _valid(name, rules, result):
            continue
        hand.add(name)  # it shadows the generation's key even if it cannot be read (as load.sh)
        data = _read(full, name, result)
        if data is not None:
            result.values[name] = data
    data_link = os.path.join(folder, _DATA)
    if not os.path.isdir(data_link):
        return result
    # Resolve ..data once: every key then comes from one generation.
    gen = os.path.realpath(data_link)
    try:
        gen_names = sorted(os.listdir(gen))
    except OSError:
        result.warnings.append(f"cannot read {_DATA}")
        return result
    for name in gen_names:
        if name in hand and not os.path.islink(os.path.join(folder, name)):
            continue  # still a regular file at the top: the hand edit wins
        if not _valid(name, rules, result):
            continue
        full = os.path.join(gen, name)
        data = _read(full, name, result)
        if data is not None:
            result.values[name] = data
        elif not tolerate and not os.path.lexists(full):
            raise _Vanished
    # Consistent only if ..data still names the generation we read: a writer
    # changes old generations only after swapping ..data away from them.
    if not tolerate and os.path.realpath(data_link) != gen:
        raise _Vanished
    return result


def load_into(
    environ: MutableMapping[str, str] | MutableMapping[bytes, bytes] | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    warn: bool = True,
) -> LoadResult:
    """Export the folder into ``environ`` (default ``os.environb``), overriding."""
    result = read_dir(path)
    target = os.environb if environ is None else environ
    for name, value in result.values.items():
        if target is os.environb or isinstance(next(iter(target), b""), bytes) and target is not os.environ:
            target[name.encode()] = value  # type: ignore[index]
        else:
            target[name] = os.fsdecode(value)  # type: ignore[index]
    if warn:
        for w in result.warnings:
            print(f"secretsd: {w}", file=sys.stderr)
    return result
