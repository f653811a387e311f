"""Calling the optional workspace runtime: 501 without one, runtime errors mapped to HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from secretsd.controlplane.errors import ApiError

T = TypeVar("T")

NO_RUNTIME = "no workspace runtime is configured on this control plane: restart is not available"

#: Why this process runs without a runtime (set by ``serve`` when the wanted one is unavailable).
unavailable_reason: str | None = None


def require_runtime(runtime: Any | None) -> Any:
    if runtime is None:
        raise ApiError(501, NO_RUNTIME + (f" ({unavailable_reason})" if unavailable_reason else ""))
    return runtime


def require_template(ws: Any) -> None:
    """A workspace created without a template holds secrets only: nothing to run."""
    if ws.template is None:
        raise ApiError(409, f"workspace {ws.id} has no template: it holds secrets only and runs outside "
                            "this control plane's runtime (create it with a template to run it here)")


def call(fn: Callable[..., T], *args: Any) -> T:
    """Run a runtime method; its errors name workspaces and reasons, never values."""
    from secretsd.runtime import base as rt  # the interface module only

    try:
        return fn(*args)
    except rt.InvalidWorkspace as exc:
        raise ApiError(400, str(exc)) from None
    except rt.WorkspaceNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except rt.WorkspaceExists as exc:
        raise ApiError(409, str(exc)) from None
    except rt.RuntimeUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    except rt.WorkspaceError as exc:
        raise ApiError(502, f"runtime: {exc}") from None
