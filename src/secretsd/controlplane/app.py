"""The control plane's app factory."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPBearer
from sqlalchemy.exc import OperationalError

from secretsd import __version__
from secretsd.controlplane import errors, routes_admin, routes_env, routes_workspaces
from secretsd.controlplane.auth import TokenCheck, load_admin_token
from secretsd.controlplane.context import ControlPlane
from secretsd.controlplane.errors import SafeJSONResponse
from secretsd.controlplane.gate import Gate
from secretsd.controlplane.hosts import HostTarget, LocalHost
from secretsd.format.durability import BatchSync, SyncMode
from secretsd.store.crypto import KeyRingError
from secretsd.controlplane.metrics import Metrics
from secretsd.controlplane.schemas import ErrorBody
from secretsd.controlplane.service import InvalidBatch, SecretsService
from secretsd.format.rules import safe_key
from secretsd.store import AlreadyExists, KeyRing, NotFound, Store, VersionConflict
from secretsd.store.engine import default_url

log = logging.getLogger("secretsd.controlplane")

MAX_BODY = 2 * 1024 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": desc}
    for code, desc in {
        400: "invalid request (names each offending key)",
        401: "missing bearer token",
        403: "wrong token",
        404: "not found",
        409: "conflict (exists, or expected_versions mismatch)",
        413: "body or value too large",
        422: "Idempotency-Key reused with a different request",
        501: "no workspace runtime configured",
        502: "host or runtime failure",
        503: "host temporarily unavailable",
    }.items()
}


@dataclass
class AppConfig:
    data_dir: Path = Path("./var")
    db_url: str | None = None
    admin_token: str | None = None  # default: SECRETSD_ADMIN_TOKEN or DATA/admin.token
    max_body: int = MAX_BODY
    worker_threads: int = 32
    sync_mode: SyncMode = "auto"  # how batched folder writes share fsyncs (format.durability)
    otel: bool = False  # FastAPI's OpenTelemetry spans and metrics, through the global providers


def create_app(
    config: AppConfig | None = None,
    *,
    store: Store | None = None,
    host: HostTarget | None = None,
    runtime: Any | None = None,
) -> FastAPI:
    """Build the control plane. ``runtime``: any object with the Runtime methods, or None (restart -> 501)."""
    config = config or AppConfig()
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    if store is None:
        store = Store.open(config.db_url or default_url(data_dir), KeyRing.load(data_dir))
    host = host or LocalHost(data_dir, sync=BatchSync(config.sync_mode))
    token = config.admin_token or load_admin_token(data_dir)[0]
    tokens = TokenCheck(token)
    service = SecretsService(store, host)
    metrics = Metrics(pending=lambda: (service.flush_pending(), store.pending_count())[1])
    service.on_write = metrics.writethrough.observe
    service.on_batch = metrics.write_batch.observe

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The pool bounds how many pushes one group commit can gather: the
        # threads of a group wait on a lock while its leader commits and
        # writes them all (they do not contend for the GIL), so 32 threads
        # make groups of up to 32 workspaces (docs/api.md, "Performance").
        anyio.to_thread.current_default_thread_limiter().total_tokens = config.worker_threads
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="secretsd control plane",
        version=__version__,
        description="Write-only secrets API: pushed values are stored encrypted and versioned, written "
        "through to each workspace's secrets.d, and re-materialised on every provision and restart.",
        default_response_class=SafeJSONResponse,
        responses=_ERRORS,
        # FastAPI's own OpenTelemetry layer checks the global providers on every
        # request (measured: about 4 % of the server's CPU per push with no
        # provider configured): only when asked for.
        telemetry=None if config.otel else {"tracing": False, "metrics": False, "logs": False},
    )
    for r in (routes_env.router, routes_workspaces.router):
        app.include_router(r, dependencies=[Depends(HTTPBearerDoc())])
    app.include_router(routes_admin.router)
    errors.install(app)
    _store_errors(app)
    app.state.full_handlers = config.otel  # no short lanes past FastAPI (routes_env._PushRoute)
    app.state.cp = ControlPlane(
        store=store, host=host, service=service, tokens=tokens, metrics=metrics, runtime=runtime,
        idempotency_secret=hashlib.sha256(b"secretsd-idempotency\0" + token.encode()).digest(),
    )
    app.add_middleware(Gate, tokens=tokens, metrics=metrics, max_body=config.max_body, routes=[r for m in (routes_env, routes_workspaces, routes_admin) for r in m.router.routes])
    failures = service.reconcile()
    for ws, exc in failures.items():
        log.warning("workspace %s: folder still pending: %s", ws, exc.reason)
    return app


class HTTPBearerDoc(HTTPBearer):
    """Documents Bearer auth in OpenAPI; the Gate does the actual check before routing."""

    def __init__(self) -> None:
        super().__init__(auto_error=False, description="Authorization: Bearer <admin token>")

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


def _store_errors(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def _nf(_r: Request, exc: NotFound) -> SafeJSONResponse:
        body: dict[str, Any] = {"error": f"{exc.what} not found"}
        if exc.key is not None:
            body["key"] = safe_key(exc.key)
        return SafeJSONResponse(body, status_code=404)

    @app.exception_handler(AlreadyExists)
    async def _ae(_r: Request, exc: AlreadyExists) -> SafeJSONResponse:
        return SafeJSONResponse({"error": f"{exc.what} already exists", "key": safe_key(exc.key)}, status_code=409)

    @app.exception_handler(VersionConflict)
    async def _vc(_r: Request, exc: VersionConflict) -> SafeJSONResponse:
        probs = [{"key": safe_key(k), "error": f"expected version {e}, stored {a}"} for k, (e, a) in sorted(exc.conflicts.items())]
        return SafeJSONResponse({"error": str(exc), "key": probs[0]["key"], "problems": probs}, status_code=409)

    @app.exception_handler(KeyRingError)
    async def _keys(_r: Request, exc: KeyRingError) -> SafeJSONResponse:
        # An operator problem, not the client's: the message names key versions only.
        log.error("encryption key problem: %s", exc)
        return SafeJSONResponse({"error": f"server misconfigured: {exc}"}, status_code=503)

    @app.exception_handler(OperationalError)
    async def _db(_r: Request, exc: OperationalError) -> SafeJSONResponse:
        # Database down, disk full, locked too long: nothing was committed; retry later.
        # The type only: the message may carry statement parameters (ciphertexts, never values).
        log.warning("database unavailable: %s", type(getattr(exc, "orig", None) or exc).__name__)
        return SafeJSONResponse({"error": "database unavailable, nothing stored; try again"}, status_code=503)

    @app.exception_handler(InvalidBatch)
    async def _ib(_r: Request, exc: InvalidBatch) -> SafeJSONResponse:
        probs = [{"key": safe_key(p.key), "error": p.reason} for p in exc.problems]
        detail = "; ".join(f"{p['key']}: {p['error']}" if p["key"] != "*" else p["error"] for p in probs[:20])
        body: dict[str, Any] = {"error": f"rejected, nothing written: {detail}", "problems": probs[:100]}
        if probs[0]["key"] != "*":
            body["key"] = probs[0]["key"]
        return SafeJSONResponse(body, status_code=413 if exc.too_large else 400)
