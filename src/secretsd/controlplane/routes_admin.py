"""Audit log, metrics and health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from secretsd.controlplane.context import ControlPlane, get_cp, iso
from secretsd.controlplane.errors import SafeJSONResponse
from secretsd.controlplane.schemas import WORKSPACE_ID_PATTERN, AuditInfo, AuditList, Health


router = APIRouter()
CP = Annotated[ControlPlane, Depends(get_cp)]


@router.get("/cp/admin/audit", response_model=AuditList, tags=["audit"], summary="Audit events, newest first")
def audit(
    cp: CP,
    workspace: Annotated[str | None, Query(pattern=WORKSPACE_ID_PATTERN, description="workspace id")] = None,
    key: Annotated[str | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="only events with a smaller id")] = None,
) -> AuditList:
    events = cp.store.audit_events(workspace=workspace, key=key, limit=limit, before=before)
    return AuditList(events=[
        AuditInfo(id=e.id, at=iso(e.at), actor=e.actor, action=e.action, workspace=e.workspace, key=e.key,
                  version=e.version, sha256_8=e.sha8) for e in events])


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(cp: CP) -> Response:
    return Response(cp.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=Health, tags=["ops"], summary="Liveness and database reachability (no auth)",
            responses={503: {"model": Health}})
def healthz(cp: CP) -> object:
    try:
        with cp.store.engine.connect() as c:
            c.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001
        return SafeJSONResponse({"status": "database unavailable"}, status_code=503)
    return Health(status="ok")
