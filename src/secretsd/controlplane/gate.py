"""The outermost ASGI layer: auth, the body limit, metrics and the last-resort 500.

Pure ASGI (no BaseHTTPMiddleware) to keep per-request overhead low. Auth
runs before the body is read, so an unauthenticated client learns nothing
about routes or validation.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from secretsd.controlplane.auth import TokenCheck
from secretsd.controlplane.errors import error_response
from secretsd.controlplane.metrics import Metrics

log = logging.getLogger("secretsd.controlplane")

PUBLIC_PATHS = {"/healthz"}
UNMATCHED = "<unmatched>"


class _TooLarge(BaseException):  # not Exception: FastAPI turns body-read errors into a 400
    pass


class Gate:
    def __init__(self, app: ASGIApp, *, tokens: TokenCheck, metrics: Metrics, max_body: int,
                 routes: Any) -> None:
        self.app = app
        self.tokens = tokens
        self.metrics = metrics
        self.max_body = max_body
        self.routes = routes  # the app's routes, to label rejected requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        started = False

        async def send_tracking(msg: Message) -> None:
            nonlocal status, started
            if msg["type"] == "http.response.start":
                status = msg["status"]
                started = True
            await send(msg)

        try:
            reject = self._precheck(scope)
            if reject is not None:
                await reject(scope, receive, send_tracking)
                return
            await self.app(scope, self._limited(receive), send_tracking)
        except _TooLarge:
            if not started:
                await error_response(413, f"request body larger than {self.max_body} bytes")(scope, receive, send_tracking)
        except Exception as exc:  # noqa: BLE001 - last resort; never echo the message
            log.error("internal error: %s", type(exc).__name__)
            if not started:
                await error_response(500, "internal error")(scope, receive, send_tracking)
        finally:
            self.metrics.observe_request(scope.get("method", ""), self._route(scope), status, time.perf_counter() - t0)

    def _precheck(self, scope: Scope) -> Any:
        if scope["path"] not in PUBLIC_PATHS:
            header = None
            for k, v in scope.get("headers", ()):
                if k == b"authorization":
                    header = v
                    break
            who = self.tokens.check(header)
            if who == 401:
                return error_response(401, "missing bearer token",
                                      headers={"WWW-Authenticate": 'Bearer realm="secretsd"'})
            if who == 403:
                return error_response(403, "invalid token")
            scope.setdefault("state", {})["actor"] = who
        self._json_by_default(scope)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    return error_response(400, "invalid Content-Length")
                if n > self.max_body:
                    return error_response(413, f"request body larger than {self.max_body} bytes")
        return None

    @staticmethod
    def _json_by_default(scope: Scope) -> None:
        """The API speaks only JSON: a body sent without a type, or with the
        one `curl -d` adds (form-urlencoded) or text/plain, is read as JSON.
        Any other declared type is left alone and answered with a 400."""
        headers = list(scope.get("headers", ()))
        for i, (k, v) in enumerate(headers):
            if k == b"content-type":
                kind = v.split(b";", 1)[0].strip().lower()
                if kind in (b"application/x-www-form-urlencoded", b"text/plain", b""):
                    headers[i] = (k, b"application/json")
                    scope["headers"] = headers
                return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            scope["headers"] = [*headers, (b"content-type", b"application/json")]

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return msg

        return wrapped

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        # Not routed (rejected before routing): find the template ourselves.
        for r in self.routes:
            try:
                match, _ = r.matches(scope)
            except Exception:  # noqa: BLE001
                continue
            if match == Match.FULL and getattr(r, "path", None):
                return str(r.path)
        return UNMATCHED
