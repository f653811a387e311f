"""The secrets.d contract: which names and values a folder may hold.

Everything here is pure (no I/O) so the writer, the control plane, the CLI
and the Python loader share one definition. ``docs/format.md`` is the prose
version of this module; keep them in step.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DEFAULT_DIR = "/configs/secrets.d"
DEFAULT_UID = 1000
DEFAULT_GID = 1000
DIR_MODE = 0o700
FILE_MODE = 0o600

#: The loader's own file: never a secret.
LOADER_NAME = "load.sh"

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME_BYTES = 255

#: Linux MAX_ARG_STRLEN: one ``NAME=value\0`` string must fit, or every later
#: exec of the process fails with E2BIG.
MAX_ENV_STRING = 131072

#: Default budget for the whole folder (sum of ``NAME=value\0``), well under
#: ARG_MAX so the agent keeps room for its own environment and argv.
DEFAULT_TOTAL_BUDGET = 1024 * 1024

#: Names that change how shells, the loader or the dynamic linker behave, or
#: that a shell manages itself and so cannot be delivered byte-exact (some of
#: those abort a `set -e` caller, or echo the value in their error). Glob
#: patterns. load.sh's `case` list, the loader cache and the Python loader use
#: exactly this tuple (tests compare them); ``docs/format.md`` says why each
#: group is here. It is also the writer's default, which is configurable.
LOADER_RESERVED: tuple[str, ...] = (
    # What the contract names: shell and loader behaviour, the linker.
    "IFS", "PS1", "PS2", "PS4", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "CDPATH", "GLOBIGNORE",
    "PATH", "HOME", "SHELL", "PWD", "OLDPWD", "LD_*", "SECRETSD_*",
    # load.sh's own helpers (it unsets them all when it ends).
    "__secretsd_*",
    # The loader sets LC_ALL=C while it runs and restores the caller's after.
    "LC_ALL",
    # Managed by the shell (measured in dash, bash, busybox ash, mksh, posh,
    # yash and zsh): read-only, recomputed, or a side effect on assignment
    # (zsh's UID/GID/USERNAME change the process's user when root).
    "_", "SHLVL", "RANDOM", "SRANDOM", "SECONDS", "LINENO", "OPTIND", "OPTARG", "OPTERR", "PPID",
    "UID", "EUID", "GID", "EGID", "USERNAME", "GROUPS", "FUNCNAME", "DIRSTACK", "PIPESTATUS",
    "HISTCMD", "HISTSIZE", "SAVEHIST", "HISTCHARS", "histchars", "COLUMNS", "LINES", "TMOUT",
    "EPOCHREALTIME", "EPOCHSECONDS", "BASH", "BASH_*", "BASHPID", "KSH_*", "KSHUID", "KSHGID",
    "KSHEGID", "USER_ID", "PGRP", "YASH_*", "ZSH_*", "KEYBOARD_HACK", "TTYIDLE", "FUNCNEST",
    "TRY_BLOCK_ERROR", "TRY_BLOCK_INTERRUPT", "ERRNO", "signals", "POSH_*",
    # mksh loads a missing command's function from a folder FPATH names;
    # zsh's arrays tied to PATH-like variables (a scalar there stops zsh).
    "FPATH", "path", "cdpath", "fpath", "manpath", "module_path", "mailpath", "psvar",
    # bash skips commands EXECIGNORE matches; glibc's own loader/libc knobs.
    "EXECIGNORE", "GLIBC_TUNABLES", "GCONV_PATH", "HOSTALIASES", "NLSPATH",
    # Change what the shells do next: POSIX mode, hooks that run code.
    "POSIXLY_CORRECT", "PROMPT_COMMAND", "COMMAND_NOT_FOUND_HANDLER", "ECHO_STYLE",
)

#: The writer's default reserved list (configurable per writer).
DEFAULT_RESERVED: tuple[str, ...] = LOADER_RESERVED


@functools.lru_cache(maxsize=8)
def _reserved_re(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled regex for the glob list: checked for every name on every write."""
    if not patterns:
        return re.compile(r"(?!)")  # an empty list reserves nothing ("" would match every name)
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class FormatError(ValueError):
    """A name or value breaks the contract. Carries the key, never the value."""

    def __init__(self, key: str, reason: str, *, too_large: bool = False) -> None:
        self.key = key
        self.reason = reason
        self.too_large = too_large
        super().__init__(f"{safe_key(key)}: {reason}")


def safe_key(key: str) -> str:
    """A printable, bounded rendering of a possibly hostile key for messages."""
    shown = key if len(key) <= 80 else key[:77] + "..."
    return repr(shown) if not NAME_RE.fullmatch(shown) else shown


def fingerprint(value: bytes) -> str:
    """First 8 hex digits of sha256: safe to log, never the value."""
    return hashlib.sha256(value).hexdigest()[:8]


def env_string_size(name: str, value: bytes) -> int:
    """Bytes one variable takes in the kernel's environment block."""
    return len(name.encode()) + 1 + len(value) + 1


def is_ignored_silently(name: str) -> bool:
    """Dotfiles (the writer's generations, ``..data``) and the loader itself."""
    return name.startswith(".") or name == LOADER_NAME


@dataclass(frozen=True)
class Rules:
    """The checks a writer applies. Defaults are the documented contract."""

    reserved: tuple[str, ...] = DEFAULT_RESERVED
    total_budget: int = DEFAULT_TOTAL_BUDGET
    max_env_string: int = MAX_ENV_STRING

    def is_reserved(self, name: str) -> bool:
        return _reserved_re(self.reserved).match(name) is not None

    def check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise FormatError(str(name), "empty name")
        if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise FormatError(name, f"name longer than {MAX_NAME_BYTES} bytes")
        if not NAME_RE.fullmatch(name):
            raise FormatError(name, "invalid name: must match ^[A-Za-z_][A-Za-z0-9_]*$")
        if self.is_reserved(name):
            raise FormatError(name, "reserved name: a shell, the loader, libc or the dynamic linker treats it "
                                    "specially (docs/format.md, Names)")

    def is_key_name(self, name: str) -> bool:
        """A name the rules accept as a variable (valid, not reserved)."""
        try:
            self.check_name(name)
        except FormatError:
            return False
        return True

    def check_value(self, name: str, value: bytes) -> None:
        if b"\0" in value:
            raise FormatError(name, "value contains a NUL byte")
        size = env_string_size(name, value)
        if size > self.max_env_string:
            raise FormatError(
                name,
                f"value too large: NAME=value takes {size} bytes, limit {self.max_env_string}",
                too_large=True,
            )

    def check(self, name: str, value: bytes) -> None:
        self.check_name(name)
        self.check_value(name, value)

    def check_total(self, env: Mapping[str, bytes]) -> None:
        total = sum(env_string_size(k, v) for k, v in env.items())
        if total > self.total_budget:
            raise FormatError(
                "*",
                f"folder total {total} bytes exceeds the budget of {self.total_budget} bytes",
                too_large=True,
            )

    def problems(self, env: Mapping[str, bytes]) -> list[FormatError]:
        """Every problem in ``env`` (not just the first), for batch validation."""
        found: list[FormatError] = []
        for name, value in env.items():
            try:
                self.check(name, value)
            except FormatError as exc:
                found.append(exc)
        return found


def encode_value(name: str, value: str | bytes) -> bytes:
    """API values are text: they must be well-formed UTF-8 (no lone surrogates)."""
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(name, "value is not well-formed UTF-8") from None


def loadable_names(names: Iterable[str], rules: Rules | None = None) -> tuple[list[str], list[str]]:
    """Split directory entries into (exported, skipped-with-warning).

    Dotfiles and ``load.sh`` are in neither list: they are ignored silently.
    """
    rules = rules or Rules()
    ok: list[str] = []
    bad: list[str] = []
    for name in names:
        if is_ignored_silently(name):
            continue
        try:
            rules.check_name(name)
        except FormatError:
            bad.append(name)
        else:
            ok.append(name)
    return sorted(ok), sorted(bad)
