"""``secretsd workspace ...``: look at local sandbox workspaces from the host.

These read the runtime's state under ``--data`` directly: host root only,
never over HTTP. ``env`` prints values (like ``docker exec ID env``); every
other command and every error names variables at most.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from secretsd.runtime.base import WorkspaceError, id_problem
from secretsd.runtime.sandbox import SandboxRuntime

EXIT_FAILURE = 1
EXIT_USAGE = 2

data_option = click.option(
    "--data", "data", type=click.Path(file_okay=False, path_type=Path), default=Path("var"),
    envvar="SECRETSD_DATA", show_default=True, help="The control plane's data folder.",
)


def _check_ids(_ctx: click.Context, _param: click.Parameter, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """Workspace ids are folder names under --data: refuse '..', '../x', 'a/b', '' as a usage error (exit 2)."""
    for v in (value,) if isinstance(value, str) else value:
        problem = id_problem(v)
        if problem:
            raise click.BadParameter(problem)
    return value


def _runtime(data: Path) -> SandboxRuntime:
    if not (data / "runtime" / "sandbox").is_dir():
        click.echo(f"error: no sandbox workspaces under {data} (wrong --data?)", err=True)
        sys.exit(EXIT_FAILURE)
    return SandboxRuntime(data)


def _fail(exc: WorkspaceError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_FAILURE)


@click.group("workspace")
def workspace() -> None:
    """Local sandbox workspaces, seen from the host (root only)."""


@workspace.command("env")
@click.argument("id", callback=_check_ids)
@data_option
@click.option("--json", "as_json", is_flag=True, help="A JSON object of names to values.")
@click.option("--settle", type=float, default=5.0, show_default=True,
              help="Seconds to wait for the entrypoint chain to exec its program.")
def env_cmd(id: str, data: Path, as_json: bool, settle: float) -> None:
    """The environment of workspace ID's main process (the process its
    entrypoint finally exec'd into), read from /proc on the host."""
    if os.geteuid() != 0:
        click.echo("error: reading a workspace's environment needs root on the host", err=True)
        sys.exit(EXIT_FAILURE)
    rt = _runtime(data)
    try:
        env = rt.main_environ(id, settle=settle)
    except WorkspaceError as exc:
        _fail(exc)
        return
    if as_json:
        # Non-UTF-8 bytes come out as \udcXX escapes (surrogateescape), so
        # the bytes can be recovered exactly.
        obj = {k: v.decode("utf-8", "surrogateescape") for k, v in sorted(env.items())}
        click.echo(json.dumps(obj, indent=2, ensure_ascii=True))
        return
    out = sys.stdout.buffer
    for k, v in sorted(env.items()):
        out.write(k.encode("utf-8", "surrogateescape") + b"=" + v + b"\n")
    out.flush()


@workspace.command("status")
@click.argument("ids", nargs=-1, callback=_check_ids)
@data_option
@click.option("--json", "as_json", is_flag=True)
def status_cmd(ids: tuple[str, ...], data: Path, as_json: bool) -> None:
    """State of workspaces (all when no ID is given)."""
    rt = _runtime(data)
    rows = [rt.status(i) for i in (ids or rt.list())]
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    click.echo(f"{'ID':<24} {'STATE':<8} {'PID':>7} {'RESTARTS':>8} {'EXIT':>5}  STARTED")
    for r in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at)) if r.started_at else "-"
        click.echo(f"{r.id:<24} {r.state:<8} {r.pid or '-':>7} {r.restarts:>8} "
                   f"{'-' if r.exit_code is None else r.exit_code:>5}  {started}")


@workspace.command("logs")
@click.argument("id", callback=_check_ids)
@data_option
@click.option("-n", "--lines", type=int, default=50, show_default=True)
def logs_cmd(id: str, data: Path, lines: int) -> None:
    """The last lines of workspace ID's console (stdout and stderr)."""
    rt = _runtime(data)
    try:
        path = rt.log_path(id)
        text = path.read_bytes()
    except WorkspaceError as exc:
        _fail(exc)
        return
    except FileNotFoundError:
        click.echo(f"error: workspace {id!r} has no log", err=True)
        sys.exit(EXIT_FAILURE)
    tail = b"\n".join(text.splitlines()[-lines:]) + b"\n"
    sys.stdout.buffer.write(tail)


@workspace.command("stop")
@click.argument("ids", nargs=-1, callback=_check_ids)
@click.option("--all", "stop_all", is_flag=True, help="Every workspace under --data.")
@data_option
def stop_cmd(ids: tuple[str, ...], stop_all: bool, data: Path) -> None:
    """Stop workspaces (their secrets stay; the control plane's start or
    restart brings them back). Workspaces outlive `secretsd serve`: this is
    how to stop them without the API."""
    if bool(ids) == stop_all:
        raise click.UsageError("give workspace IDs or --all")
    rt = _runtime(data)
    failed = False
    for id in rt.list() if stop_all else ids:
        try:
            rt.stop(id)
            click.echo(f"stopped {id}", err=True)
        except WorkspaceError as exc:
            click.echo(f"error: {exc}", err=True)
            failed = True
    sys.exit(EXIT_FAILURE if failed else 0)


commands = [workspace]
