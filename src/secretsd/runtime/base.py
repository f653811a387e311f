"""The runtime interface: what the control plane asks of a workspace runtime.

A runtime starts and stops workspaces; it never reads or writes the secrets
store. The control plane re-materialises ``configs_dir/secrets.d`` from its
store *before* calling ``provision``, ``start`` or ``restart``.

Errors carry workspace ids and reasons, never values: the create-time
environment of a workspace can hold secrets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

State = Literal["running", "stopped", "exited", "absent"]
RestartMode = Literal["recreate", "restart"]

#: Ids become folder names and container names: keep them tame. The length
#: matches the control plane's API (128); the hostname is cut to 63 (see
#: ``hostname_for``), so no id the API accepts is refused here.
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
HOSTNAME_MAX = 63


@dataclass
class WorkspaceSpec:
    id: str
    template: str | None  # path to a template folder (its Dockerfile at the root)
    env: dict[str, str] = field(default_factory=dict)  # create-time snapshot
    configs_dir: Path = Path()  # host folder mounted at /configs

    def __repr__(self) -> str:  # the env may hold secrets: names only
        return (
            f"WorkspaceSpec(id={self.id!r}, template={self.template!r}, "
            f"env=<{len(self.env)} names>, configs_dir={str(self.configs_dir)!r})"
        )


@dataclass(frozen=True)
class WorkspaceStatus:
    id: str
    state: State
    pid: int | None = None  # host pid of the workspace's first process
    started_at: float | None = None  # epoch seconds of the last start
    restarts: int = 0  # restart() calls since provision, both modes
    exit_code: int | None = None  # when state == "exited"


class WorkspaceError(Exception):
    """Base of runtime errors. Messages name workspaces, never values."""


class RuntimeUnavailable(WorkspaceError):
    """The runtime cannot work on this host (tool missing, no engine...)."""

    def __init__(self, runtime: str, reason: str) -> None:
        self.runtime = runtime
        self.reason = reason
        super().__init__(f"{runtime} runtime unavailable: {reason}")


class WorkspaceNotFound(WorkspaceError):
    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        super().__init__(f"workspace {workspace!r} not found")


class WorkspaceExists(WorkspaceError):
    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        super().__init__(f"workspace {workspace!r} already exists")


class InvalidWorkspace(WorkspaceError):
    """A bad id, template or spec (reported before anything starts)."""


class WorkspaceStartFailed(WorkspaceError):
    """The workspace did not come up; see its log."""


class MainProcessUnavailable(WorkspaceError):
    """The workspace has no main process to read (not running, or no access)."""


def id_problem(workspace: str) -> str | None:
    """Why ``workspace`` is not a valid id (for a usage error), or None."""
    if not isinstance(workspace, str) or not ID_RE.fullmatch(workspace):
        shown = workspace[:80] if isinstance(workspace, str) else workspace
        return f"invalid workspace id {shown!r}: must match ^{ID_RE.pattern}$"
    return None


def check_id(workspace: str) -> str:
    if not ID_RE.fullmatch(workspace):
        raise InvalidWorkspace(f"invalid workspace id {workspace[:80]!r}: use [A-Za-z0-9_.-], at most 128")
    return workspace


def hostname_for(workspace: str) -> str:
    """The workspace's hostname: its id, cut to the 63 characters a hostname may have."""
    return workspace[:HOSTNAME_MAX]


@runtime_checkable
class Runtime(Protocol):
    name: str

    def provision(self, spec: WorkspaceSpec) -> None:
        """Create and start. Raises WorkspaceExists if the id is taken."""

    def start(self, id: str) -> None:
        """Start a stopped or exited workspace, keeping its environment."""

    def stop(self, id: str) -> None:
        """Stop the whole process tree (SIGTERM, then SIGKILL after a grace)."""

    def restart(self, id: str, mode: RestartMode) -> None:
        """``recreate``: new tree, env rebuilt from the create-time snapshot.
        ``restart``: new tree with the environment of the previous start."""

    def status(self, id: str) -> WorkspaceStatus:
        """Never raises for an unknown id: state ``absent``."""

    def remove(self, id: str) -> None:
        """Stop and forget. Leaves ``configs_dir`` alone (the control plane owns it)."""

    def main_environ(self, id: str) -> dict[str, bytes]:
        """Host administrator only: the environment of the process the
        entrypoint finally exec'd into."""
