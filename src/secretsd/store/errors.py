"""Store errors. They carry names and versions, never values."""

from __future__ import annotations


class StoreError(Exception):
    """Base class for store failures the caller can act on."""


class NotFound(StoreError):
    def __init__(self, what: str, key: str | None = None) -> None:
        self.what = what
        self.key = key
        super().__init__(f"{what} not found" + (f": {key}" if key else ""))


class AlreadyExists(StoreError):
    def __init__(self, what: str, key: str) -> None:
        self.what = what
        self.key = key
        super().__init__(f"{what} already exists: {key}")


class VersionConflict(StoreError):
    """``expected_versions`` did not match; ``conflicts`` maps name -> (expected, actual)."""

    def __init__(self, conflicts: dict[str, tuple[int, int]]) -> None:
        self.conflicts = conflicts
        detail = ", ".join(f"{k} (expected {e}, stored {a})" for k, (e, a) in sorted(conflicts.items()))
        super().__init__(f"version conflict: {detail}")
