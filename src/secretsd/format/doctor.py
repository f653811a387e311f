"""Health checks for one secrets.d folder. Findings name keys, never values."""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass

from secretsd.format.rules import DIR_MODE, FILE_MODE, LOADER_NAME, FormatError, env_string_size
from secretsd.format.writer import (
    DATA,
    GEN_PREFIX,
    STALE_CACHE_USED,
    TMP_PREFIX,
    SecretsDir,
    SecretsDirError,
    _gen_seq,
    _loader_version,
    loader_source,
)


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    code: str
    message: str
    key: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        """For --json: ``key`` only on findings about one key (never null)."""
        d = asdict(self)
        if d["key"] is None:
            del d["key"]
        return d


def _attrs(path: str, want_mode: int, sd: SecretsDir, what: str, code: str, key: str | None = None) -> list[Finding]:
    try:
        st = os.lstat(path)
    except OSError:
        return []
    out = []
    if stat.S_IMODE(st.st_mode) != want_mode:
        out.append(Finding("error", code, f"{what}: mode {stat.S_IMODE(st.st_mode):04o}, want {want_mode:04o}", key))
    if (st.st_uid, st.st_gid) != (sd.uid, sd.gid):
        out.append(Finding("error", code, f"{what}: owner {st.st_uid}:{st.st_gid}, want {sd.uid}:{sd.gid}", key))
    return out


def diagnose(sd: SecretsDir) -> list[Finding]:
    root = str(sd.path)
    if os.path.islink(root):
        return [Finding("error", "NOT_A_FOLDER", f"{root} is a symlink; the writer refuses it")]
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return [Finding("error", "MISSING", f"{root} does not exist (run `secretsd init`)")]
    except OSError as exc:  # e.g. a parent this user cannot enter: not the same as missing
        return [Finding("error", "UNREADABLE", f"cannot look at {root}: {os.strerror(exc.errno or 0)}")]
    if not stat.S_ISDIR(st.st_mode):
        return [Finding("error", "NOT_A_FOLDER", f"{root} is not a folder")]
    out: list[Finding] = _attrs(root, DIR_MODE, sd, root, "DRIFT")
    loader = os.path.join(root, LOADER_NAME)
    if not os.path.isfile(loader) or os.path.islink(loader):
        out.append(Finding("error", "NO_LOADER", f"{LOADER_NAME} missing (run `secretsd init`)"))
    else:
        with open(loader, "rb") as fh:
            data = fh.read()
        if data != loader_source():
            # Sourced by entrypoints, often as root: any change matters.
            have, ship = _loader_version(data), _loader_version(loader_source())
            how = f"edited (it says version {have}, as shipped)" if have == ship else \
                f"version {have}, this secretsd ships version {ship}"
            out.append(Finding(
                "error", "LOADER_CHANGED",
                f"{LOADER_NAME} differs from the one this secretsd ships: {how}; `secretsd repair` reinstalls it",
            ))
    try:
        cache = sd.cache_problem()
        entries = sd.list()
        values = sd.read_all()  # once: get() per key would re-read the folder each time
    except SecretsDirError as exc:
        return out + [Finding("error", "UNREADABLE", str(exc))]
    if cache == STALE_CACHE_USED:
        out.append(Finding(
            "error", "CACHE_STALE",
            f"the generation's load cache is {cache}; run `secretsd repair` (the next write also rewrites it)",
        ))
    elif cache is not None:
        out.append(Finding(
            "warning", "CACHE_STALE",
            f"the generation's load cache is {cache}: load.sh reads those values from the files instead "
            "(same values, slower); the next write or `secretsd repair` rewrites it",
        ))
    gen = os.path.join(root, DATA)
    if os.path.isdir(gen):
        out += _attrs(os.path.realpath(gen), DIR_MODE, sd, f"{DATA} generation", "DRIFT")
    total = 0
    for e in entries:
        path = os.path.join(root, e.name)
        out += _attrs(os.path.realpath(path), FILE_MODE, sd, e.name, "DRIFT", e.name)
        value = values.get(e.name, b"")
        total += env_string_size(e.name, value)
        if value.endswith(b"\n"):
            out.append(Finding("warning", "TRAILING_NEWLINE", f"{e.name}: value ends with a newline (it is part of the value)", e.name))
        if b"\r" in value:
            out.append(Finding("warning", "CARRIAGE_RETURN", f"{e.name}: value contains CR (it is part of the value)", e.name))
        if e.source == "file":
            try:
                sd.rules.check_value(e.name, value)
            except FormatError as exc:
                out.append(Finding("error", "HAND_FILE_REFUSED", f"{e.name}: hand-made file the format refuses "
                                   f"({exc.reason}): loaders differ on it, and every write stops until it is fixed "
                                   "or removed", e.name))
            else:
                out.append(Finding("warning", "HAND_FILE", f"{e.name}: hand-made file, adopted at the next write", e.name))
    for name in sd.skipped_names():
        out.append(Finding("warning", "BAD_NAME", f"{name!r}: not a valid variable name or reserved; loaders skip it"))
    if total > sd.rules.total_budget:
        out.append(Finding("error", "OVER_BUDGET", f"folder total {total} bytes exceeds the budget of {sd.rules.total_budget}"))
    names = os.listdir(root)
    current = os.readlink(gen) if os.path.islink(gen) else None
    cur_seq = _gen_seq(current) if current else None
    listed = {e.name for e in entries}
    for name in sorted(names):
        path = os.path.join(root, name)
        if (name not in listed and not os.path.islink(path) and os.path.isfile(path) and sd.rules.is_key_name(name)
                and os.path.getsize(path) > sd.rules.max_env_string):
            out.append(Finding("error", "TOO_LARGE", f"{name}: hand-made file larger than "
                               f"{sd.rules.max_env_string} bytes: loaders skip it; remove it or make it smaller", name))
        if os.path.islink(path) and not name.startswith("."):
            if os.readlink(path) != f"{DATA}/{name}":
                out.append(Finding("warning", "FOREIGN_LINK", f"{name}: a link the writer did not make; loaders ignore it (run `secretsd repair`)", name))
        seq = _gen_seq(name)
        if seq is not None and cur_seq is not None and seq > cur_seq:
            out.append(Finding("warning", "LEFTOVER", f"{name}: left by an interrupted write (run `secretsd repair`)"))
    leftovers = [n for n in names if n.startswith(TMP_PREFIX) or n == "..data_tmp"]
    for name in leftovers:
        out.append(Finding("warning", "LEFTOVER", f"{name}: left by an interrupted write (run `secretsd repair`)"))
    gens = [n for n in names if n.startswith(GEN_PREFIX)]
    if len(gens) > 40:
        out.append(Finding("warning", "GENERATIONS", f"{len(gens)} generations kept (run `secretsd repair`)"))
    return out
