"""Workspace routes: create (snapshot + materialise + provision), list, show, delete, restart."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from secretsd.controlplane import runtime_hook
from secretsd.controlplane.context import ControlPlane, actor_of, get_cp, iso
from secretsd.controlplane.errors import ApiError, SafeJSONResponse
from secretsd.controlplane.hosts import HostError
from secretsd.controlplane.routes_env import WsId
from secretsd.controlplane.schemas import NoBody, RestartRequest, RestartResult, WorkspaceCreate, WorkspaceInfo, WorkspaceList
from secretsd.format.rules import NAME_RE, FormatError
from secretsd.store import Workspace

router = APIRouter(tags=["workspaces"])
CP = Annotated[ControlPlane, Depends(get_cp)]
BASE = "/cp/admin/workspaces"


def _info(cp: ControlPlane, ws: Workspace, *, materialised: bool | None = None, detail: bool = False) -> WorkspaceInfo:
    state = None
    if cp.runtime is not None and detail:
        try:
            state = str(cp.runtime.status(ws.id).state)
        except Exception:  # noqa: BLE001 - status is best effort in a listing
            state = "unknown"
    if detail:
        cp.service.flush_pending()
    pending = cp.store.pending_for(ws.id) if detail else []
    if detail and materialised is None:
        materialised = not pending  # the folder holds what the store has
    return WorkspaceInfo(id=ws.id, template=ws.template, env_names=ws.env_names, created_at=iso(ws.created_at),
                         materialised=materialised, state=state, pending=pending)


def _check_snapshot(cp: ControlPlane, env: dict[str, str]) -> None:
    """The create-time environment becomes a process environment: portable names, no NUL, valid
    UTF-8, and each NAME=value within the kernel's limit for one string (else every exec fails)."""
    bad: list[dict[str, str]] = []
    too_large = 0
    for name, value in env.items():
        if not NAME_RE.fullmatch(name) or len(name) > 255:  # reserved names are fine here: it is not the folder
            bad.append({"key": name, "error": "invalid name: must match ^[A-Za-z_][A-Za-z0-9_]*$"})
            continue
        try:
            cp.service.rules.check_value(name, value.encode())  # NUL, one string's size
        except UnicodeEncodeError:
            bad.append({"key": name, "error": "value is not well-formed UTF-8"})
        except FormatError as exc:
            too_large += exc.too_large
            bad.append({"key": name, "error": exc.reason})
    if bad:
        raise ApiError(413 if too_large == len(bad) else 400,
                       "invalid create-time environment: " + ", ".join(p["key"] for p in bad[:10]),
                       key=bad[0]["key"], problems=bad[:50])


@router.post(BASE, response_model=WorkspaceInfo, status_code=201, summary="Create (and provision) a workspace")
def create_workspace(body: WorkspaceCreate, request: Request, cp: CP) -> Any:
    _check_snapshot(cp, body.env)
    cp.service.check_snapshot(body.env)
    ws = cp.store.create_workspace(body.id, body.template, body.env, actor=actor_of(request))
    cp.service.forget_workspace(ws.id)
    try:
        cp.service.materialise(ws.id)
        materialised = True
    except HostError:
        materialised = False
    if cp.runtime is not None:
        if not materialised:
            _undo(cp, ws.id, request)
            raise ApiError(503, "the workspace's secrets folder could not be written; not provisioned")
        from secretsd.runtime.base import WorkspaceSpec

        spec = WorkspaceSpec(id=ws.id, template=ws.template, env=dict(body.env), configs_dir=cp.host.configs_dir(ws.id))
        try:
            runtime_hook.call(cp.runtime.provision, spec)
        except ApiError:
            _undo(cp, ws.id, request)
            raise
    return SafeJSONResponse(_info(cp, ws, materialised=materialised, detail=True).model_dump(), status_code=201)


def _undo(cp: ControlPlane, ws_id: str, request: Request) -> None:
    cp.store.delete_workspace(ws_id, actor=actor_of(request))
    cp.service.forget_workspace(ws_id)
    cp.host.remove(ws_id)


@router.get(BASE, response_model=WorkspaceList, summary="List workspaces")
def list_workspaces(cp: CP) -> WorkspaceList:
    cp.service.flush_pending()
    behind = set(cp.store.pending_workspaces())
    return WorkspaceList(workspaces=[_info(cp, w, materialised=w.id not in behind) for w in cp.store.list_workspaces()])


@router.get(BASE + "/{workspace_id}", response_model=WorkspaceInfo, summary="Show a workspace")
def get_workspace(workspace_id: WsId, cp: CP) -> WorkspaceInfo:
    return _info(cp, cp.store.get_workspace(workspace_id), detail=True)


@router.delete(BASE + "/{workspace_id}", response_model=WorkspaceInfo, summary="Delete a workspace, its secrets and folder")
def delete_workspace(workspace_id: WsId, request: Request, cp: CP) -> WorkspaceInfo:
    ws = cp.store.get_workspace(workspace_id)
    if cp.runtime is not None:
        try:
            runtime_hook.call(cp.runtime.remove, workspace_id)
        except ApiError as exc:
            if exc.status != 404:  # already gone from the runtime is fine
                raise
    with cp.service.lock(workspace_id):
        cp.store.delete_workspace(workspace_id, actor=actor_of(request))
        cp.service.forget_workspace(workspace_id)
        cp.host.remove(workspace_id)
    return _info(cp, ws)


@router.post(BASE + "/{workspace_id}/restart", response_model=RestartResult, summary="Materialise, then restart")
def restart_workspace(workspace_id: WsId, request: Request, cp: CP, body: RestartRequest | None = None) -> RestartResult:
    ws = cp.store.get_workspace(workspace_id)
    runtime = runtime_hook.require_runtime(cp.runtime)
    mode = (body or RestartRequest()).mode
    _materialise_first(cp, workspace_id, "restarted")
    if not _provision_if_lost(cp, runtime, ws):
        runtime_hook.call(runtime.restart, workspace_id, mode)
    cp.store.record_event(actor_of(request), f"workspace.{mode}", workspace_id)
    return RestartResult(workspace_id=workspace_id, mode=mode, materialised=True, restarted=True)


def _materialise_first(cp: ControlPlane, workspace_id: str, what: str) -> None:
    try:
        cp.service.materialise(workspace_id)
    except HostError as exc:
        # Booting on a stale folder would lose the pushed values: do not boot.
        raise ApiError(503 if exc.transient else 502, f"not {what}: {exc}") from None


def _provision_if_lost(cp: ControlPlane, runtime: Any, ws: Workspace) -> bool:
    """The runtime no longer knows the workspace (its state was wiped, or the control plane
    now runs another runtime): provision it again from the stored create-time snapshot."""
    if runtime_hook.call(runtime.status, ws.id).state != "absent":
        return False
    runtime_hook.require_template(ws)
    from secretsd.runtime.base import WorkspaceSpec

    spec = WorkspaceSpec(id=ws.id, template=ws.template, env=cp.store.workspace_env(ws.id),
                         configs_dir=cp.host.configs_dir(ws.id))
    runtime_hook.call(runtime.provision, spec)
    return True


@router.post(BASE + "/{workspace_id}/start", response_model=WorkspaceInfo, summary="Materialise, then start a stopped workspace")
def start_workspace(workspace_id: WsId, request: Request, cp: CP, _body: NoBody | None = None) -> WorkspaceInfo:
    ws = cp.store.get_workspace(workspace_id)
    runtime = runtime_hook.require_runtime(cp.runtime)
    _materialise_first(cp, workspace_id, "started")
    if not _provision_if_lost(cp, runtime, ws):
        runtime_hook.call(runtime.start, workspace_id)  # a running workspace is left as it is
    cp.store.record_event(actor_of(request), "workspace.start", workspace_id)
    return _info(cp, ws, materialised=True, detail=True)


@router.post(BASE + "/{workspace_id}/stop", response_model=WorkspaceInfo, summary="Stop a workspace (its secrets stay)")
def stop_workspace(workspace_id: WsId, request: Request, cp: CP, _body: NoBody | None = None) -> WorkspaceInfo:
    ws = cp.store.get_workspace(workspace_id)
    runtime = runtime_hook.require_runtime(cp.runtime)
    runtime_hook.require_template(ws)
    runtime_hook.call(runtime.stop, workspace_id)
    cp.store.record_event(actor_of(request), "workspace.stop", workspace_id)
    return _info(cp, ws, detail=True)
