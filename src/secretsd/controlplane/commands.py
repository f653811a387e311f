"""``secretsd serve``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from secretsd.store.engine import DB_ENV


def demo_runtime(data_dir: Path) -> Any | None:
    """Hook for ``serve --demo``: the workspace runtime to wire in, or None.

    The runtime issue fills this in (local sandbox runtime + example
    workspaces); until then ``--demo`` just serves.
    """
    return None


@click.command("serve")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("./var"),
              show_default=True, help="Database, key file, admin token and workspace folders.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--db", "db_url", default=None, help=f"SQLAlchemy URL (default: ${DB_ENV}, else SQLite in --data).")
@click.option("--demo", is_flag=True, help="Also provision the example workspaces (needs the runtime).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(data_dir: Path, host: str, port: int, db_url: str | None, demo: bool, log_level: str) -> None:
    """Run the control plane (FastAPI + uvicorn) with embedded defaults."""
    import uvicorn

    from secretsd.controlplane.app import AppConfig, create_app
    from secretsd.controlplane.auth import TOKEN_ENV, load_admin_token

    data_dir.mkdir(parents=True, exist_ok=True)
    token, token_file = load_admin_token(data_dir)
    runtime = demo_runtime(data_dir) if demo else None
    if demo and runtime is None:
        click.echo("--demo: no workspace runtime available yet; serving the API only", err=True)
    app = create_app(
        AppConfig(data_dir=data_dir, db_url=db_url or os.environ.get(DB_ENV), admin_token=token),
        runtime=runtime,
    )
    where = f"in {token_file.resolve()} (0600)" if token_file else f"from ${TOKEN_ENV}"
    # Say where the token is, never the token itself.
    click.echo(f"secretsd control plane on http://{host}:{port}  admin token: {where}", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level in ("info", "debug"))


commands = [serve]
