"""Whether an unprivileged user can reach a path (every parent traversable by others)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def reachable_by_others(path: str | os.PathLike[str]) -> bool:
    p = Path(os.path.abspath(path))  # the path as used; its symlink target is the system's business
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in [p, *p.parents] if d.is_dir())
