"""Encryption at rest: AES-256-GCM with versioned keys so the key can rotate.

A key ring maps key versions to 32-byte keys; the highest version encrypts,
any version decrypts. Every ciphertext is bound to its row (owner, name,
version) through the GCM associated data, so rows cannot be swapped.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: ``encryption_version`` column values (0 = plain is never written).
ENC_PLAIN = 0
ENC_AES_GCM = 1

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ENV = "SECRETSD_ENCRYPTION_KEY"
KEY_FILE_NAME = "encryption.key"


class KeyRingError(Exception):
    """The key ring cannot be loaded or lacks a version. Never carries key bytes."""


def _decode_key(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyRingError(f"{where}: not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyRingError(f"{where}: key must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def parse_env_keys(text: str) -> dict[int, bytes]:
    """``SECRETSD_ENCRYPTION_KEY``: one base64 key (version 1) or ``1:b64,2:b64``."""
    text = text.strip()
    if ":" not in text:
        return {1: _decode_key(text, KEY_ENV)}
    keys: dict[int, bytes] = {}
    for part in text.split(","):
        ver, _, b64 = part.partition(":")
        try:
            n = int(ver)
        except ValueError:
            raise KeyRingError(f"{KEY_ENV}: bad version {ver!r}") from None
        keys[n] = _decode_key(b64, f"{KEY_ENV} version {n}")
    return keys


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def write_key_file(path: Path, keys: Mapping[int, bytes]) -> None:
    """Atomically write the key file, 0600 from its first byte."""
    doc = {
        "format": "secretsd-keyring/1",
        "current": max(keys),
        "keys": {str(v): base64.b64encode(k).decode() for v, k in sorted(keys.items())},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (json.dumps(doc, indent=1) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_key_file(path: Path) -> dict[int, bytes]:
    try:
        doc = json.loads(path.read_text())
        return {int(v): _decode_key(k, f"{path} version {v}") for v, k in doc["keys"].items()}
    except KeyRingError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyRingError(f"{path}: unreadable key file ({type(exc).__name__})") from None


class KeyRing:
    """Versioned AES-256-GCM keys, from the environment or a 0600 key file.

    A file-backed ring reloads when the file changes, so a running server
    picks up ``secretsd rotate-key`` without a restart.
    """

    def __init__(self, keys: Mapping[int, bytes], path: Path | None = None) -> None:
        if not keys:
            raise KeyRingError("empty key ring")
        self._keys = dict(keys)
        self._aead = {v: AESGCM(k) for v, k in self._keys.items()}
        self.path = path
        self._stamp = self._file_stamp()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, data_dir: Path, env: Mapping[str, str] | None = None) -> KeyRing:
        """``SECRETSD_ENCRYPTION_KEY`` if set, else ``DATA/encryption.key`` (created on first start)."""
        env = os.environ if env is None else env
        if env.get(KEY_ENV):
            return cls(parse_env_keys(env[KEY_ENV]))
        path = Path(data_dir) / KEY_FILE_NAME
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_key_file(path, {1: new_key()})
        return cls(read_key_file(path), path)

    @property
    def current(self) -> int:
        return max(self._keys)

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys)

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _maybe_reload(self) -> None:
        if self.path is None or self._file_stamp() == self._stamp:
            return
        with self._lock:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            keys = read_key_file(self.path)
            self._keys, self._aead, self._stamp = keys, {v: AESGCM(k) for v, k in keys.items()}, stamp

    def encrypt(self, plaintext: bytes, aad: bytes) -> tuple[bytes, int]:
        """-> (nonce + ciphertext, key version)."""
        self._maybe_reload()
        ver = self.current
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead[ver].encrypt(nonce, plaintext, aad), ver

    def decrypt(self, blob: bytes, aad: bytes, key_version: int) -> bytes:
        self._maybe_reload()
        aead = self._aead.get(key_version)
        if aead is None:
            raise KeyRingError(f"key version {key_version} is not in the key ring")
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            # The key file was replaced by an unrelated key (or the row was
            # tampered with): say so instead of failing obscurely.
            raise KeyRingError(
                f"a stored value does not decrypt with key version {key_version}: "
                "wrong encryption key (restore the key file or SECRETSD_ENCRYPTION_KEY)"
            ) from None
        except ValueError:  # too short to hold a nonce and a tag: the row itself is damaged
            raise KeyRingError(
                f"a stored value (key version {key_version}) is damaged: not an AES-GCM ciphertext "
                "(restore the database from a backup)"
            ) from None
