"""A template's files: a folder on disk, optionally overlaid with edits.

The patcher audits its own result before writing anything, so the audit
reads through this small interface instead of the file system directly.
"""

from __future__ import annotations

import os
from pathlib import Path

_SKIP_DIRS = {".git", "node_modules", ".venv", "__pycache__"}


class Tree:
    def __init__(self, root: str | Path, overlay: dict[str, bytes] | None = None) -> None:
        self.root = Path(root)
        self.overlay: dict[str, bytes] = dict(overlay or {})
        self._files: list[str] | None = None

    def read(self, rel: str) -> bytes | None:
        if rel in self.overlay:
            return self.overlay[rel]
        p = self.root / rel
        try:
            return p.read_bytes() if p.is_file() else None
        except OSError:
            return None

    def text(self, rel: str) -> str | None:
        data = self.read(rel)
        return None if data is None else data.decode("utf-8", errors="replace")

    def files(self) -> list[str]:
        """Repo-relative paths of all files (POSIX separators), sorted."""
        if self._files is None:
            out: list[str] = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
                rel = os.path.relpath(dirpath, self.root)
                for f in filenames:
                    out.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
            self._files = sorted(set(out) | set(self.overlay))
        return self._files

    def is_file(self, rel: str) -> bool:
        return rel in self.overlay or (self.root / rel).is_file()

    def is_dir(self, rel: str) -> bool:
        rel = rel.strip("/")
        if rel in ("", "."):
            return True
        prefix = rel + "/"
        return any(f.startswith(prefix) for f in self.files())
