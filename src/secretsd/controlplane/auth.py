"""The admin token: from SECRETSD_ADMIN_TOKEN, or generated 0600 in the data folder."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

TOKEN_ENV = "SECRETSD_ADMIN_TOKEN"
TOKEN_FILE = "admin.token"


def load_admin_token(data_dir: Path, env: dict[str, str] | None = None) -> tuple[str, Path | None]:
    """-> (token, file it lives in or None when it came from the environment)."""
    env = dict(os.environ) if env is None else env
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV].strip(), None
    path = Path(data_dir) / TOKEN_FILE
    try:
        token = path.read_text().strip()
        if token:
            return token, path
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return token, path


class TokenCheck:
    """Constant-time Bearer check. ``actor`` is a token id safe to audit (not the token)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty admin token")
        self._digest = hashlib.sha256(token.encode()).digest()
        self.actor = "admin:" + hashlib.sha256(token.encode()).hexdigest()[:8]

    def check(self, header: bytes | None) -> int | str:
        """-> actor id, or 401 (missing/not Bearer) / 403 (wrong token)."""
        if not header:
            return 401
        scheme, _, cred = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not cred.strip():
            return 401
        # Compare digests: constant time and independent of the token's length.
        if hmac.compare_digest(hashlib.sha256(cred.strip()).digest(), self._digest):
            return self.actor
        return 403
