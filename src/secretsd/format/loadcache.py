"""The loader cache: one generation's values, pre-quoted as sh assignments.

Why it exists: ``read`` in dash and busybox ash takes one read(2) per byte,
so reading the files costs more than the forks it saves; sourcing one file
is a buffered read. The writer puts ``..gen-N/.load-cache.sh`` next to the
values of every generation it writes. The files stay the truth; load.sh uses
the cache all or nothing, and only while it is exact (docs/format.md, "The
loader cache"):

* it must name exactly the generation's files, and none of them may be
  newer than it: a hand edit makes a file newer. For that to hold even
  where ``test -nt`` compares whole seconds (busybox), the writer dates the
  cache and every file it writes with it ``BACKDATE`` seconds in the past;
* a cache that is missing, unreadable or does not source is not used;
* shells that exit on a damaged sourced file (mksh, posh, yash) never use it.

The file defines a function ``__secretsd_apply`` with one
``export NAME='value'`` per name (a ``'`` becomes ``'\\''``) and, last,
``__secretsd_cn=' NAME NAME '`` (the names, sorted as the shell's glob sorts
them under LC_ALL=C). Names
load.sh would skip (reserved, too long, too large) are left out, so a folder
holding one is read file by file and load.sh warns about it as usual.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from secretsd.format.rules import LOADER_RESERVED, Rules

CACHE_NAME = ".load-cache.sh"
#: Written files are dated this many whole seconds before the write.
BACKDATE = 2
_HEADER = b"# secretsd load cache: written with this generation; see docs/format.md\n"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}\Z")
_MAX_ENV_STRING = 131072
#: load.sh refuses these names whatever the writer's rules say.
LOADER_RULES = Rules(reserved=LOADER_RESERVED)


def loader_exports(name: str, value: bytes) -> bool:
    """Would load.sh export this file (name checks and the per-string limit)?"""
    return (
        _NAME.match(name) is not None
        and not LOADER_RULES.is_reserved(name)
        and len(name) + len(value) + 2 <= _MAX_ENV_STRING
    )


def render(values: Mapping[str, bytes]) -> bytes:
    """The cache for ``values``. The name list comes last: a cache cut short
    anywhere lacks it (or fails to source), so load.sh never uses it."""
    names = sorted(n for n, v in values.items() if loader_exports(n, v))
    out = [_HEADER, b"__secretsd_apply() {\n"]
    for n in names:
        out += [b"export ", n.encode(), b"='", values[n].replace(b"'", b"'\\''"), b"'\n"]
    out += [b"}\n", b"__secretsd_cn=' ", b"".join(n.encode() + b" " for n in names), b"'\n"]
    return b"".join(out)


def stamp_ns(now: float | None = None) -> int:
    """The modification time (ns) for the cache and the files written with it."""
    return (int(time.time() if now is None else now) - BACKDATE) * 1_000_000_000
