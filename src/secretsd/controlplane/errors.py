"""Error bodies ``{"error": ..., "key"?: ...}`` and the handlers that produce them.

Every client mistake is a 4xx. Messages are built from names, locations and
reasons only: pydantic's ``input`` (which may be a value) is never echoed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from secretsd.format.rules import safe_key

log = logging.getLogger("secretsd.controlplane")


class SafeJSONResponse(JSONResponse):
    """ASCII-only JSON: a lone surrogate in a hostile name cannot break encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class ApiError(Exception):
    def __init__(self, status: int, error: str, *, key: str | None = None, **extra: Any) -> None:
        self.status = status
        self.error = error
        self.key = key
        self.extra = extra
        super().__init__(error)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error}
        if self.key is not None:
            out["key"] = safe_key(self.key)
        out.update(self.extra)
        return out


def error_response(status: int, error: str, *, key: str | None = None, headers: dict[str, str] | None = None,
                   **extra: Any) -> SafeJSONResponse:
    return SafeJSONResponse(ApiError(status, error, key=key, **extra).body(), status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(safe_key(str(p)) if isinstance(p, str) else str(p) for p in loc)


def validation_body(exc: RequestValidationError) -> tuple[int, dict[str, Any]]:
    problems: list[dict[str, str]] = []
    key: str | None = None
    for err in exc.errors():
        typ = err.get("type", "")
        loc = tuple(err.get("loc", ()))
        if typ == "json_invalid":
            return 400, {"error": "malformed JSON body"}
        if loc[:2] in (("path", "workspace_id"), ("query", "workspace")):
            return 400, {"error": "invalid workspace id: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"}
        if typ == "missing" and loc == ("body",):
            return 400, {"error": "missing JSON body"}
        where = _loc(loc[1:] if loc[:1] in (("body",), ("query",), ("path",)) else loc) or "body"
        # "env" -> NAME -> problem: report the name as the key.
        if len(loc) >= 3 and loc[1] in ("env", "expected_versions") and isinstance(loc[2], str):
            key = key or loc[2]
        msg = str(err.get("msg", "invalid"))
        problems.append({"key": where, "error": msg})
    text = "; ".join(f"{p['key']}: {p['error']}" for p in problems[:10]) or "invalid request"
    body: dict[str, Any] = {"error": f"invalid request: {text}", "problems": problems[:50]}
    if key is not None:
        body["key"] = safe_key(key)
    return 400, body


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_req: Request, exc: ApiError) -> SafeJSONResponse:
        return SafeJSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> SafeJSONResponse:
        status, body = validation_body(exc)
        return SafeJSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> SafeJSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        # FastAPI's words for a body that is not UTF-8 or JSON nested too deep.
        parse = exc.status_code == 400 and detail == "There was an error parsing the body"
        msg = "malformed JSON body" if parse else detail.lower()
        return SafeJSONResponse({"error": msg}, status_code=exc.status_code, headers=exc.headers)

    # Unexpected exceptions are turned into a 500 by the Gate (gate.py), which
    # logs the type only: Starlette's own handler would re-raise and log a traceback.
