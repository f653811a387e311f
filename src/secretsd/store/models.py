"""Plain records the store hands out: metadata only, never values."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SecretMeta:
    name: str
    scope: str  # "workspace" | "global"
    version: int
    size: int
    sha8: str
    updated_at: float


@dataclass(frozen=True)
class VersionMeta:
    version: int
    size: int
    sha8: str
    created_at: float
    actor: str
    action: str
    current: bool


@dataclass(frozen=True)
class Workspace:
    id: str
    template: str | None
    env_names: list[str]
    created_at: float


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: float
    actor: str
    action: str
    workspace: str | None
    key: str | None
    version: int | None
    sha8: str | None


@dataclass(frozen=True)
class Change:
    """What a committed change did: new versions, and the workspaces whose folder must follow."""

    versions: dict[str, int]
    workspaces: list[str] = field(default_factory=list)
    at: float = 0.0  # commit-time stamp of its pending marks (see Store.clear_pending)


@dataclass(frozen=True)
class IdempotentAnswer:
    request_sha: str
    status: int
    body: str
