"""Host targets: where a workspace's secrets.d folder lives and how it is written.

The routes and the service only see ``HostTarget``. ``LocalHost`` writes the
folders in this machine's data directory; a remote host agent (the writer
behind an authenticated API on another machine) implements the same four
methods and plugs in unchanged.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from secretsd.format.rules import FormatError, Rules
from secretsd.format.writer import LockTimeout, SecretsDir, SecretsDirError, WriteError

#: errnos that mean "try again later" (503) rather than "this host is broken" (502).
_TRANSIENT = {errno.EBUSY, errno.EAGAIN, errno.ENOSPC, errno.EDQUOT, errno.EINTR, errno.ETIMEDOUT}


class HostError(Exception):
    """Writing a workspace folder failed. Carries the workspace, key and reason; never a value."""

    def __init__(self, workspace: str, reason: str, *, key: str | None = None, transient: bool = False,
                 missing: bool = False) -> None:
        self.workspace = workspace
        self.reason = reason
        self.key = key
        self.transient = transient
        self.missing = missing  # the folder is gone: a batch alone would not restore the other keys
        super().__init__(f"workspace {workspace}: {reason}")


@runtime_checkable
class HostTarget(Protocol):
    def configs_dir(self, workspace: str) -> Path:
        """The folder mounted at /configs in the workspace (as the runtime sees it)."""

    def apply(self, workspace: str, set: Mapping[str, bytes], delete: Iterable[str]) -> None:  # noqa: A002
        """One atomic, durable batch. Raises HostError."""

    def replace_all(self, workspace: str, env: Mapping[str, bytes]) -> None:
        """Make the folder hold exactly ``env`` (materialisation). Raises HostError."""

    def remove(self, workspace: str) -> None:
        """Forget the workspace's host folder entirely."""


class LocalHost:
    """``DATA/workspaces/<id>/configs/secrets.d`` on this machine, via the crash-safe writer."""

    def __init__(self, data_dir: Path, *, rules: Rules | None = None, lock_timeout: float = 30.0,
                 uid: int | None = None, gid: int | None = None) -> None:
        self.base = Path(data_dir).resolve() / "workspaces"
        self.rules = rules or Rules()
        self.lock_timeout = lock_timeout
        self.uid, self.gid = uid, gid
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o711)

    def configs_dir(self, workspace: str) -> Path:
        # Callers validate ids; this is a second line of defence.
        if "/" in workspace or workspace in ("", ".", ".."):
            raise HostError(workspace[:80], "invalid workspace id")
        return self.base / workspace / "configs"

    def _dir(self, workspace: str) -> SecretsDir:
        return SecretsDir(
            self.configs_dir(workspace) / "secrets.d", base=self.base, uid=self.uid, gid=self.gid,
            rules=self.rules, lock_timeout=self.lock_timeout,
        )

    def apply(self, workspace: str, set: Mapping[str, bytes], delete: Iterable[str]) -> None:  # noqa: A002
        sd = self._dir(workspace)
        if not os.path.lexists(os.path.join(sd.path, "..data")):
            raise HostError(workspace, "the folder is missing: it needs a full rewrite", missing=True)
        with _translated(workspace):
            sd.apply(set=set, delete=list(delete))

    def replace_all(self, workspace: str, env: Mapping[str, bytes]) -> None:
        with _translated(workspace):
            self._dir(workspace).replace_all(env)

    def remove(self, workspace: str) -> None:
        path = self.base / self.configs_dir(workspace).parent.name
        # rmtree uses fd-relative calls and never follows links below the top.
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)

    def secrets_dir(self, workspace: str) -> SecretsDir:
        """The writer for one folder (tests and tools read it back with it)."""
        return self._dir(workspace)


class _translated:
    """Map the writer's errors to HostError; names and reasons only."""

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, _tb: object) -> bool:
        if exc is None:
            return False
        ws = self.workspace
        if isinstance(exc, LockTimeout):
            raise HostError(ws, "the folder is locked by another writer", transient=True) from None
        if isinstance(exc, WriteError):
            raise HostError(ws, exc.reason, key=exc.key, transient=exc.errno in _TRANSIENT) from None
        if isinstance(exc, FormatError):
            raise HostError(ws, exc.reason, key=exc.key) from None
        if isinstance(exc, SecretsDirError):
            raise HostError(ws, str(exc)) from None
        if isinstance(exc, OSError):
            code = errno.errorcode.get(exc.errno or 0, "E?")
            raise HostError(ws, f"{os.strerror(exc.errno or 0)} ({code})", transient=exc.errno in _TRANSIENT) from None
        return False
