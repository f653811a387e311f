"""``secretsd serve``."""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy.exc import SQLAlchemyError

from secretsd.store.engine import DB_ENV


def select_runtime(name: str, data_dir: Path, templates: Path | None) -> Any | None:
    """The workspace runtime to wire in, or None (secrets only: restart routes
    answer 501 with the reason). Says on stderr which, and why."""
    from secretsd.controlplane import runtime_hook
    from secretsd.runtime.catalog import default_templates
    from secretsd.runtime.catalog import select_runtime as pick

    sel = pick(name, data_dir, templates or default_templates())
    click.echo(sel.message, err=True)
    runtime_hook.unavailable_reason = sel.unavailable
    return sel.runtime


def _no_core_dumps() -> None:
    """The server holds every value in clear in memory: never let a crash write it to a core file."""
    import ctypes
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    try:  # PR_SET_DUMPABLE = 4: also blocks ptrace by other uids and core_pattern pipes
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _open_store(data_dir: Path, url: str | None) -> Any:
    """The store, opened here rather than in create_app so that an unreachable
    database or a bad key is one line (exit 1), not a traceback, and the
    password in the URL is never shown."""
    from secretsd.store.crypto import KeyRing, KeyRingError
    from secretsd.store.dburl import failure_message
    from secretsd.store.engine import default_url
    from secretsd.store.store import Store

    target = url or default_url(data_dir)
    try:
        data_dir.chmod(0o700)  # as create_app does, before the key file and database are created
        keyring = KeyRing.load(data_dir)
    except KeyRingError as exc:
        _fail(f"encryption key: {exc}")
    except OSError as exc:
        _fail(f"cannot use the data folder {data_dir}: {exc.strerror}")
    try:
        store = Store.open(target, keyring)
    except (SQLAlchemyError, OSError, RuntimeError) as exc:
        _fail(failure_message(exc, target))
    try:
        store.check_keys()  # a wrong key must not start: it would store new values nothing can read later
    except KeyRingError as exc:
        store.close()
        _fail(f"encryption key: {exc}")
    return store


@click.command("serve")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("./var"),
              show_default=True, help="Database, key file, admin token and workspace folders.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--db", "db_url", default=None, help=f"SQLAlchemy URL (default: ${DB_ENV}, else SQLite in --data).")
@click.option("--runtime", "runtime_name", type=click.Choice(["sandbox", "docker", "none"]), default="sandbox",
              show_default=True, help="Workspace runtime: the local bubblewrap sandbox (host root), Docker, or none "
              "(secrets only). One that cannot run here falls back to none, saying why.")
@click.option("--templates", "templates_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help='Templates folder: {"template": NAME} names a folder in it '
              "(default: the repo's examples/templates).")
@click.option("--demo", is_flag=True, help="Also provision one workspace per template (needs the runtime).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--threads", "worker_threads", default=32, show_default=True, type=click.IntRange(1, 256),
              help="Worker threads for the blocking work (database, folder writes); see docs/operations.md.")
@click.option("--sync", "sync_mode", type=click.Choice(["auto", "fsync"]), default="auto", show_default=True,
              help="auto: folders written together share one syncfs per barrier where that is safe and cheap; "
              "fsync: every folder fsyncs its own files (see docs/operations.md).")
@click.option("--otel", is_flag=True, envvar="SECRETSD_OTEL",
              help="FastAPI's OpenTelemetry spans and metrics through the globally configured providers "
              "(e.g. under opentelemetry-instrument). Off by default: it costs CPU on every request.")
def serve(data_dir: Path, host: str, port: int, db_url: str | None, runtime_name: str, templates_dir: Path | None,
          demo: bool, log_level: str, worker_threads: int, sync_mode: str, otel: bool) -> None:
    """Run the control plane (FastAPI + uvicorn) with embedded defaults."""
    _no_core_dumps()
    from secretsd.store.dburl import BadDbUrl, given_url

    try:  # before anything is created or bound: a bad URL is a usage error
        url = given_url(db_url)
    except BadDbUrl as exc:
        _fail(str(exc), 2)

    import uvicorn

    from secretsd.controlplane.app import AppConfig, create_app
    from secretsd.controlplane.auth import TOKEN_ENV, load_admin_token

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot create the data folder {data_dir}: {exc.strerror}")
    # Bind before announcing anything: a busy port is a clear error, not a
    # "ready" line followed by a crash.
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        code = exc.errno or 0
        if code < 0:  # a resolver error: create_server re-raises getaddrinfo's as OSError(-2, ...)
            why, hint = f"{host!r} does not resolve to an address", "--host"
        elif code == errno.EADDRNOTAVAIL:
            why, hint = f"{host!r} is not an address of this machine", "--host"
        else:
            why, hint = os.strerror(code), "--port"
        click.echo(f"error: cannot listen on {host}:{port}: {why} (choose another {hint})", err=True)
        sys.exit(1)
    port = sock.getsockname()[1]
    store = _open_store(data_dir, url)
    token, token_file = load_admin_token(data_dir)
    runtime = select_runtime(runtime_name, data_dir, templates_dir)
    if demo and runtime is None:
        click.echo("--demo: no workspace runtime, so no example workspaces; serving the API only", err=True)
    try:
        app = create_app(AppConfig(data_dir=data_dir, db_url=url, admin_token=token, worker_threads=worker_threads,
                                   sync_mode=sync_mode, otel=otel), store=store, runtime=runtime)
    except SQLAlchemyError as exc:
        from secretsd.store.dburl import failure_message
        from secretsd.store.engine import default_url

        _fail(failure_message(exc, url or default_url(data_dir)))
    where = f"in {token_file.resolve()} (0600)" if token_file else f"from ${TOKEN_ENV}"
    # Say where the token is, never the token itself.
    click.echo(f"secretsd control plane on http://{host}:{port}  admin token: {where}", err=True)
    if token_file is None and len(token) < MIN_TOKEN_CHARS:
        # Its length only, never the token.
        click.echo(f"warning: ${TOKEN_ENV} is shorter than {MIN_TOKEN_CHARS} characters: anyone who can reach "
                   f"this port may guess it (use e.g. `openssl rand -base64 32`)", err=True)
    if demo and runtime is not None:
        from secretsd.acceptance import examples  # an API client: it does not import the control plane

        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
        examples.run_in_background(url, token, data_dir, runtime.catalog.names(), token_file,
                                   lambda line: click.echo(line, err=True))
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled; a clean stop exits 0, as uvicorn.run does


#: Shorter admin tokens from the environment get a warning (the generated one has 43).
MIN_TOKEN_CHARS = 32

commands = [serve]
