"""A small client of the control-plane API (httpx). Errors carry the HTTP
status and the server's ``error`` text, which names keys, never values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from secretsd.runtime.base import id_problem

TOKEN_ENV = "SECRETSD_ADMIN_TOKEN"


class ApiFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"HTTP {status}: {message}" if status else message)


class TokenMissing(Exception):
    pass


def resolve_token(token: str | None, token_file: Path | None, data: Path | None) -> str:
    """--token, else $SECRETSD_ADMIN_TOKEN, else --token-file, else DATA/admin.token."""
    if token:
        return token.strip()
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    for path in (token_file, data / "admin.token" if data else None):
        if path is not None and path.is_file():
            try:
                text = path.read_text().strip()
            except OSError as exc:
                raise TokenMissing(f"cannot read the admin token from {path}: {exc.strerror}") from None
            if text:
                return text
    where = f" (no {data / 'admin.token'})" if data else ""
    raise TokenMissing(f"no admin token: pass --token-file FILE or set ${TOKEN_ENV}{where}")


class Client:
    def __init__(self, url: str, token: str, *, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @staticmethod
    def _ws(id: str) -> str:
        """The URL path of workspace ``id``. An id such as '..' or 'a/b' would
        resolve to another route (e.g. the global secrets): refused here."""
        problem = id_problem(id)
        if problem:
            raise ApiFailure(0, problem)
        return f"/cp/admin/workspaces/{id}"

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201)) -> dict[str, Any]:
        try:
            r = self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ApiFailure(0, f"cannot reach the control plane at {self.url}: {type(exc).__name__}") from None
        try:
            data = r.json()
        except ValueError:
            data = {}
        if r.status_code not in ok:
            msg = data.get("error") if isinstance(data, dict) else None
            raise ApiFailure(r.status_code, str(msg or r.reason_phrase))
        return data if isinstance(data, dict) else {"items": data}

    # -- workspaces ---------------------------------------------------------

    def create(self, id: str, template: str | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": id, "env": env or {}}
        if template is not None:
            body["template"] = template
        return self.call("POST", "/cp/admin/workspaces", body)

    def workspace(self, id: str) -> dict[str, Any]:
        return self.call("GET", self._ws(id))

    def workspaces(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/cp/admin/workspaces")["workspaces"])

    def delete(self, id: str) -> dict[str, Any]:
        return self.call("DELETE", self._ws(id))

    def restart(self, id: str, mode: str = "recreate") -> dict[str, Any]:
        return self.call("POST", self._ws(id) + "/restart", {"mode": mode})

    def start(self, id: str) -> dict[str, Any]:
        return self.call("POST", self._ws(id) + "/start")

    def stop(self, id: str) -> dict[str, Any]:
        return self.call("POST", self._ws(id) + "/stop")

    # -- secrets --------------------------------------------------------------

    def push(self, id: str, env: dict[str, str], *, restart: bool = False, mode: str = "recreate") -> dict[str, Any]:
        return self.call("POST", self._ws(id) + "/env",
                         {"env": env, "restart": restart, "restart_mode": mode})

    def delete_key(self, id: str, name: str) -> dict[str, Any]:
        return self.call("DELETE", self._ws(id) + f"/env/{name}")

    def secrets(self, id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", self._ws(id) + "/env")["secrets"])
