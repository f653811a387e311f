"""Request and response bodies (pydantic). No response model has a value field."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

WORKSPACE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
MAX_VERSION = 2**31 - 1

Version = Annotated[StrictInt, Field(ge=0, le=MAX_VERSION)]
RestartMode = Literal["recreate", "restart"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvPush(_In):
    """Either ``{"env": {...}}`` or the single form ``{"key": ..., "value": ...}``."""

    env: dict[StrictStr, StrictStr] | None = Field(default=None, description="Names to values; one atomic batch.")
    key: StrictStr | None = Field(default=None, description="Single form: the name.")
    value: StrictStr | None = Field(default=None, description="Single form: the value.")
    restart: StrictBool = Field(default=False, description="Restart the workspace once, after the write.")
    restart_mode: RestartMode = Field(default="recreate", description="How to restart when restart is true.")
    expected_versions: dict[StrictStr, Version] | None = Field(
        default=None, description="Optimistic concurrency: name -> version last seen (0 = absent); 409 on mismatch."
    )

    @model_validator(mode="after")
    def _one_form(self) -> EnvPush:
        single = self.key is not None or self.value is not None
        if self.env is not None and single:
            raise ValueError('use either "env" or "key"/"value", not both')
        if self.env is None:
            if self.key is None or self.value is None:
                raise ValueError('give "env": {...} or both "key" and "value"')
        elif not self.env:
            raise ValueError('"env" is empty')
        extra = sorted(set(self.expected_versions or {}) - set(self.pairs()))
        if extra:
            raise ValueError(f'"expected_versions" names keys this push does not set: {", ".join(extra[:10])}')
        return self

    def pairs(self) -> dict[str, str]:
        if self.env is not None:
            return dict(self.env)
        assert self.key is not None and self.value is not None
        return {self.key: self.value}


class PushResult(BaseModel):
    workspace_id: str | None = Field(description="null for global pushes")
    keys: list[str]
    versions: dict[str, int]
    persisted: bool = Field(description="true once every affected folder is durable")
    restarted: bool = False
    failed_workspaces: list[str] = Field(default_factory=list)
    error: str | None = None


class SecretInfo(BaseModel):
    name: str
    scope: Literal["workspace", "global"]
    version: int
    size: int
    sha256_8: str = Field(description="first 8 hex digits of the value's sha256")
    updated_at: str


class SecretList(BaseModel):
    workspace_id: str | None
    secrets: list[SecretInfo]


class VersionInfo(BaseModel):
    version: int
    size: int
    sha256_8: str
    created_at: str
    actor: str
    action: str
    current: bool


class VersionList(BaseModel):
    workspace_id: str | None
    name: str
    versions: list[VersionInfo]


class Rollback(_In):
    version: Annotated[StrictInt, Field(ge=1, le=MAX_VERSION)]


class DeleteResult(BaseModel):
    workspace_id: str | None
    key: str
    deleted_version: int
    persisted: bool
    failed_workspaces: list[str] = Field(default_factory=list)
    error: str | None = None


class WorkspaceCreate(_In):
    id: Annotated[StrictStr, Field(pattern=WORKSPACE_ID_PATTERN)]
    template: Annotated[StrictStr, Field(max_length=4096)] | None = None
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict, description="Create-time environment snapshot.")


class WorkspaceInfo(BaseModel):
    id: str
    template: str | None
    env_names: list[str] = Field(description="names in the create-time snapshot (never values)")
    created_at: str
    materialised: bool | None = Field(
        default=None, description="true: the folder holds what the store has; false: a folder write is pending "
        "(the next write or materialisation applies it); null: not known (a deleted workspace)")
    state: str | None = Field(default=None, description="runtime state, when a runtime is configured")
    pending: list[str] = Field(default_factory=list, description="keys whose folder write is pending")


class WorkspaceList(BaseModel):
    workspaces: list[WorkspaceInfo]


class NoBody(_In):
    """Routes that take no parameters: `{}` or no body; anything else is 400."""


class RestartRequest(_In):
    mode: RestartMode = "recreate"


class RestartResult(BaseModel):
    workspace_id: str
    mode: RestartMode
    materialised: bool
    restarted: bool


class AuditInfo(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    workspace: str | None
    key: str | None
    version: int | None
    sha256_8: str | None


class AuditList(BaseModel):
    events: list[AuditInfo]


class Problem(BaseModel):
    key: str
    error: str


class ErrorBody(BaseModel):
    error: str
    key: str | None = None
    problems: list[Problem] | None = None
    persisted: bool | None = None


class Health(BaseModel):
    status: str
