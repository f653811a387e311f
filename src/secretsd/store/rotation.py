"""Key rotation: add a new key, re-encrypt every row under it, retire the old keys."""

from __future__ import annotations

from dataclasses import dataclass

from secretsd.store.crypto import KeyRing, new_key, read_key_file, write_key_file
from secretsd.store.store import Store


@dataclass(frozen=True)
class RotationReport:
    new_version: int
    rewritten: int
    retired: list[int]
    still_in_use: list[int]


def rotate(store: Store, *, passes: int = 3) -> RotationReport:
    """Rotate the store's key ring.

    File-backed ring: a new key becomes current (the file keeps the old ones
    until no row uses them). Environment ring (``SECRETSD_ENCRYPTION_KEY``):
    the operator has already added the new highest version; rows move to it.
    A running server re-reads the key file, so rows it writes during the
    rotation are caught by the next pass.
    """
    kr = store.keyring
    if kr.path is not None:
        keys = read_key_file(kr.path)
        keys[max(keys) + 1] = new_key()
        write_key_file(kr.path, keys)
        store.keyring = kr = KeyRing(keys, kr.path)
    rewritten = 0
    in_use: set[int] = set()
    for _ in range(passes):
        rewritten += store.reencrypt()
        in_use = store.key_versions_in_use() - {kr.current}
        if not in_use:
            break
    retired: list[int] = []
    if kr.path is not None and not in_use:
        keys = read_key_file(kr.path)
        retired = sorted(v for v in keys if v != kr.current)
        write_key_file(kr.path, {kr.current: keys[kr.current]})
    return RotationReport(kr.current, rewritten, retired, sorted(in_use))
