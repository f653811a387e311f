"""Secrets routes, per workspace and global. Write-only: no route returns a value."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from secretsd.controlplane import runtime_hook
from secretsd.controlplane.context import ControlPlane, actor_of, get_cp, iso
from secretsd.controlplane.errors import ApiError, SafeJSONResponse
from secretsd.controlplane.hosts import HostError
from secretsd.controlplane.schemas import (
    WORKSPACE_ID_PATTERN,
    DeleteResult,
    EnvPush,
    PushResult,
    Rollback,
    SecretInfo,
    SecretList,
    VersionInfo,
    VersionList,
)
from secretsd.controlplane.service import WriteResult
from secretsd.format.rules import FormatError, Rules
from secretsd.store import GLOBAL, Change, NotFound

router = APIRouter(tags=["secrets"])
log = logging.getLogger("secretsd.controlplane")

WsId = Annotated[str, Path(pattern=WORKSPACE_ID_PATTERN, description="workspace id")]
Name = Annotated[str, Path(max_length=1024, description="variable name")]
IdemKey = Annotated[
    str | None,
    Header(max_length=255, pattern=r"^[\x21-\x7e]+$", description="makes retries safe: same key and body, same answer"),
]
CP = Annotated[ControlPlane, Depends(get_cp)]

WS = "/cp/admin/workspaces/{workspace_id}/env"
GL = "/cp/admin/env"


def _label(owner: str) -> str | None:
    return owner or None


def _count_failures(cp: ControlPlane, failures: dict[str, HostError]) -> None:
    """Count and log folder writes left pending (workspaces, keys and reasons: never a value)."""
    cp.metrics.writethrough_failures.inc(len(failures))
    for _, f in sorted(failures.items()):
        log.warning("folder write failed, left pending (the next materialisation applies it): %s", f)


def _failure_status(failures: dict[str, HostError]) -> int:
    return 503 if all(f.transient for f in failures.values()) else 502


def _failure_text(failures: dict[str, HostError]) -> str:
    parts = [str(f) for _, f in sorted(failures.items())[:5]]
    more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
    return "stored, but the folder write failed (pending; the next materialisation applies it): " + "; ".join(parts) + more


_ANY_NAME = Rules(reserved=())


def _check_name(cp: ControlPlane, name: str, *, reserved_ok: bool = False) -> None:
    """400 for a malformed name. ``reserved_ok``: listing versions of and
    deleting a stored key must work even if the key became reserved later."""
    try:
        (_ANY_NAME if reserved_ok else cp.service.rules).check_name(name)
    except FormatError as exc:
        raise ApiError(400, exc.reason, key=name) from None


def _running_workspaces(cp: ControlPlane, workspaces: list[str]) -> list[str]:
    """What a global push with ``"restart": true`` restarts: the workspaces this runtime runs
    now. Secrets-only ones (no template) have nothing to restart; stopped ones stay stopped
    (their next start materialises first)."""
    out = []
    for ws in workspaces:
        try:
            if cp.store.get_workspace(ws).template is None:
                continue
        except NotFound:
            continue  # deleted since the push: nothing to restart
        if str(runtime_hook.call(cp.runtime.status, ws).state) == "running":  # type: ignore[union-attr]
            out.append(ws)
    return out


def _restart_all(cp: ControlPlane, workspaces: list[str], mode: str) -> None:
    for ws in workspaces:
        cp.service.materialise(ws)
        runtime_hook.call(cp.runtime.restart, ws, mode)  # type: ignore[union-attr]


def _push(cp: ControlPlane, owner: str, body: EnvPush, request: Request, idem: str | None) -> Any:
    actor = actor_of(request)
    if body.restart:
        ws = cp.store.get_workspace(owner) if owner != GLOBAL else None  # 404 before 501
        runtime_hook.require_runtime(cp.runtime)
        if ws is not None:
            runtime_hook.require_template(ws)  # 409 before anything is written
    values = cp.service.encode(body.pairs())
    keys = sorted(values)

    def answer(change: Change) -> tuple[int, str]:
        res = PushResult(workspace_id=_label(owner), keys=keys, versions=change.versions, persisted=True,
                         restarted=body.restart)
        return 200, res.model_dump_json()

    scope = f"POST {request.scope['route'].path} {owner} {actor}"
    digest = cp.request_digest(body.model_dump()) if idem else ""
    if not idem:
        result = cp.service.push(owner, values, actor=actor, expected=body.expected_versions)
        return _finish(cp, owner, keys, result, body, idem, scope, digest)
    with cp.service.lock(owner):  # check-then-store must be atomic for one key
        prior = cp.store.idempotent_answer(idem, scope)
        if prior is not None:
            return _replay(cp, owner, idem, scope, digest, prior)
        result = cp.service.push(owner, values, actor=actor, expected=body.expected_versions,
                                 idempotency=(idem, scope, digest, answer))
    return _finish(cp, owner, keys, result, body, idem, scope, digest)


def _finish(cp: ControlPlane, owner: str, keys: list[str], result: WriteResult, body: EnvPush,
            idem: str | None, scope: str, digest: str) -> Any:
    res = PushResult(workspace_id=_label(owner), keys=keys, versions=result.change.versions, persisted=True)
    status = 200
    if not result.persisted:
        _count_failures(cp, result.failures)
        status = _failure_status(result.failures)
        res.persisted = False
        res.failed_workspaces = sorted(result.failures)
        res.error = _failure_text(result.failures)
    elif body.restart:
        try:
            targets = [owner] if owner != GLOBAL else _running_workspaces(cp, result.change.workspaces)
            _restart_all(cp, targets, body.restart_mode)
            res.restarted = True
        except (ApiError, HostError) as exc:
            status = 502
            res.error = f"stored and written, but the restart failed: {exc}"
    if idem and status != 200:
        cp.store.record_answer(idem, scope, digest, status, res.model_dump_json())
    return SafeJSONResponse(res.model_dump(), status_code=status)


def _replay(cp: ControlPlane, owner: str, idem: str, scope: str, digest: str, prior: Any) -> Any:
    if prior.request_sha != digest:
        raise ApiError(422, "Idempotency-Key was already used with a different request")
    body = json.loads(prior.body)
    status = prior.status
    if status in (502, 503) and not body.get("persisted", True):
        # The earlier attempt stored the change but could not write the folder: try again now.
        try:
            if owner == GLOBAL:
                if cp.service.reconcile():
                    raise HostError("*", "still failing")
            else:
                cp.service.materialise(owner)
            body.update(persisted=True, failed_workspaces=[], error=None)
            status = 200
            cp.store.record_answer(idem, scope, digest, status, json.dumps(body))
        except HostError:
            pass
    return SafeJSONResponse(body, status_code=status, headers={"Idempotent-Replayed": "true"})


def _list(cp: ControlPlane, owner: str) -> SecretList:
    metas = cp.store.list_secrets(owner)
    return SecretList(workspace_id=_label(owner), secrets=[
        SecretInfo(name=m.name, scope=m.scope, version=m.version, size=m.size, sha256_8=m.sha8,  # type: ignore[arg-type]
                   updated_at=iso(m.updated_at)) for m in metas])


def _delete(cp: ControlPlane, owner: str, name: str, request: Request) -> Any:
    _check_name(cp, name, reserved_ok=True)
    result = cp.service.delete(owner, name, actor=actor_of(request))
    res = DeleteResult(workspace_id=_label(owner), key=name, deleted_version=result.change.versions[name], persisted=True)
    return _answer(cp, res, result)


def _answer(cp: ControlPlane, res: Any, result: Any) -> Any:
    """200 with ``res``, or, when the folder write failed, 502/503 saying which workspaces."""
    if result.persisted:
        return res
    _count_failures(cp, result.failures)
    res.persisted = False
    res.failed_workspaces = sorted(result.failures)
    res.error = _failure_text(result.failures)
    return SafeJSONResponse(res.model_dump(), status_code=_failure_status(result.failures))


def _versions(cp: ControlPlane, owner: str, name: str) -> VersionList:
    _check_name(cp, name, reserved_ok=True)
    rows = cp.store.versions(owner, name)
    return VersionList(workspace_id=_label(owner), name=name, versions=[
        VersionInfo(version=v.version, size=v.size, sha256_8=v.sha8, created_at=iso(v.created_at), actor=v.actor,
                    action=v.action, current=v.current) for v in rows])


def _rollback(cp: ControlPlane, owner: str, name: str, body: Rollback, request: Request) -> Any:
    _check_name(cp, name)
    result = cp.service.rollback(owner, name, body.version, actor=actor_of(request))
    res = PushResult(workspace_id=_label(owner), keys=[name], versions=result.change.versions, persisted=True)
    return _answer(cp, res, result)


# -- workspace scope ---------------------------------------------------------

def push_workspace(workspace_id: WsId, body: EnvPush, request: Request, cp: CP,
                   idempotency_key: IdemKey = None) -> Any:
    return _push(cp, workspace_id, body, request, idempotency_key)


_WORKSPACE_ID = re.compile(WORKSPACE_ID_PATTERN)


async def _plain_push(request: Request) -> EnvPush | None:
    """The push body when the request is the plain, valid kind (JSON, a valid workspace
    id, no Idempotency-Key), else None: FastAPI's own handler then takes it, errors and all.
    Parsed and validated as FastAPI does it (``json.loads``, then the model in Python mode)."""
    if request.app.state.full_handlers:  # serve --otel: FastAPI's dependency and endpoint spans too
        return None
    headers = request.headers
    if "idempotency-key" in headers or not _WORKSPACE_ID.fullmatch(request.path_params.get("workspace_id", "")):
        return None
    if headers.get("content-type", "").partition(";")[0].strip().lower() != "application/json":
        return None
    try:
        return EnvPush.model_validate(json.loads(await request.body()))  # the body is cached for a fallback
    except Exception:  # noqa: BLE001 - any problem: the full handler answers it with its usual error
        return None


class _PushRoute(APIRoute):
    """``POST .../env`` with a short lane for the usual request: a valid plain push goes
    straight to the endpoint's work in the thread pool, without FastAPI's dependency
    solving (measured: about a third of the server's per-request CPU at 32 clients, in a
    server whose folder writes were no-ops). Anything else, and every error, takes the full
    handler, so answers and the OpenAPI description are the route's own. (The lane reads
    the control plane from ``app.state``, not through ``Depends(get_cp)``: overrides of
    ``get_cp`` reach only the full handler.)"""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        full = super().get_route_handler()

        async def handler(request: Request) -> Response:
            body = await _plain_push(request)
            if body is None:
                return await full(request)
            cp = request.app.state.cp
            return await run_in_threadpool(_push, cp, request.path_params["workspace_id"], body, request, None)

        return handler


router.add_api_route(WS, push_workspace, methods=["POST"], response_model=PushResult,
                     summary="Push secrets to a workspace (write-through, durable)", route_class_override=_PushRoute)


@router.get(WS, response_model=SecretList, summary="List a workspace's secrets (names and metadata only)")
def list_workspace(workspace_id: WsId, cp: CP) -> SecretList:
    return _list(cp, workspace_id)


@router.delete(WS + "/{name}", response_model=DeleteResult, summary="Delete a workspace secret")
def delete_workspace_secret(workspace_id: WsId, name: Name, request: Request, cp: CP) -> Any:
    return _delete(cp, workspace_id, name, request)


@router.get(WS + "/{name}/versions", response_model=VersionList, summary="Versions of a workspace secret")
def versions_workspace(workspace_id: WsId, name: Name, cp: CP) -> VersionList:
    return _versions(cp, workspace_id, name)


@router.post(WS + "/{name}/rollback", response_model=PushResult, summary="Write an old version as a new one")
def rollback_workspace(workspace_id: WsId, name: Name, body: Rollback, request: Request, cp: CP) -> Any:
    return _rollback(cp, workspace_id, name, body, request)


# -- global scope ------------------------------------------------------------

@router.post(GL, response_model=PushResult, summary="Push global secrets (inherited by every workspace)")
def push_global(body: EnvPush, request: Request, cp: CP, idempotency_key: IdemKey = None) -> Any:
    return _push(cp, GLOBAL, body, request, idempotency_key)


@router.get(GL, response_model=SecretList, summary="List global secrets")
def list_global(cp: CP) -> SecretList:
    return _list(cp, GLOBAL)


@router.delete(GL + "/{name}", response_model=DeleteResult, summary="Delete a global secret")
def delete_global_secret(name: Name, request: Request, cp: CP) -> Any:
    return _delete(cp, GLOBAL, name, request)


@router.get(GL + "/{name}/versions", response_model=VersionList, summary="Versions of a global secret")
def versions_global(name: Name, cp: CP) -> VersionList:
    return _versions(cp, GLOBAL, name)


@router.post(GL + "/{name}/rollback", response_model=PushResult, summary="Roll a global secret back")
def rollback_global(name: Name, body: Rollback, request: Request, cp: CP) -> Any:
    return _rollback(cp, GLOBAL, name, body, request)
