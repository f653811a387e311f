"""``secretsd verify-restart`` and ``secretsd demo``.

Exit codes: 0 ok, 1 failure (a check failed, or the host cannot run it),
2 usage. Output names keys and sha256[:8] prefixes, never a value.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

EXIT_FAILURE = 1


def _console(err: bool = False):  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=err, width=max(150, Console().width))


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        click.echo(f"error: {what} reads a workspace's main-process environment on the host: run it as root",
                   err=True)
        sys.exit(EXIT_FAILURE)


@click.command("verify-restart")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, envvar="SECRETSD_URL",
              help="The control plane.")
@click.option("--workspace", "workspace", metavar="ID", help="The workspace to check.")
@click.option("--all", "all_", is_flag=True, help="Every workspace the control plane lists.")
@click.option("--token", default=None, help="Admin token (prefer $SECRETSD_ADMIN_TOKEN or --token-file: "
              "argv is visible to other users).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File holding the admin token (default: DATA/admin.token).")
@click.option("--mode", type=click.Choice(["recreate", "restart"]), default="recreate", show_default=True)
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("var"), envvar="SECRETSD_DATA",
              show_default=True, help="The control plane's data folder (where the sandbox runtime keeps its state).")
@click.option("--json", "as_json", is_flag=True, help="A JSON report on stdout.")
def verify_restart(url: str, workspace: str | None, all_: bool, token: str | None, token_file: Path | None,
                   mode: str, data: Path, as_json: bool) -> None:
    """The RFC's acceptance test against a running control plane: push a random
    canary (multi-line, trailing newline), restart over HTTP, check the
    workspace's main process has it byte-exact (read on the host, root only),
    delete the canary. Exit 1 when any workspace fails."""
    from secretsd.acceptance.client import ApiFailure, Client, TokenMissing, resolve_token
    from secretsd.acceptance.verify import sandbox_reader, table, to_json, verify_workspace

    if (workspace is not None) == all_:
        raise click.UsageError("give --workspace ID or --all")
    if workspace is not None:
        from secretsd.runtime.base import id_problem

        # An id like '..' or '../x' would make the API path resolve to another
        # route (a global secret): refuse it before any request.
        problem = id_problem(workspace)
        if problem:
            raise click.BadParameter(problem, param_hint="'--workspace'")
    _need_root("verify-restart")
    if not (data / "runtime" / "sandbox").is_dir():
        click.echo(f"error: no sandbox workspaces under {data} (pass the control plane's --data)", err=True)
        sys.exit(EXIT_FAILURE)
    try:
        tok = resolve_token(token, token_file, data)
    except TokenMissing as exc:
        raise click.UsageError(str(exc)) from None
    reader = sandbox_reader(data)
    with Client(url, tok) as client:
        try:
            listed = client.workspaces() if all_ else []
        except ApiFailure as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILURE)
        # --all: a secrets-only workspace (no template) runs nothing, so there is no process to check.
        ids = [w["id"] for w in listed if w.get("template")] if all_ else [workspace]
        skipped = sorted(w["id"] for w in listed if not w.get("template"))
        checks = [verify_workspace(client, reader, ws, mode) for ws in ids if ws]
    ok = bool(checks) and all(c.ok for c in checks)
    if as_json:
        click.echo(to_json(checks, skipped))
    else:
        con = _console()
        con.print(table(checks, f"verify-restart ({mode}) against {url}"))
        for c in checks:
            if c.error:
                con.print(f"[red]{c.workspace}: {c.error}[/]")
        if skipped:
            con.print(f"skipped {len(skipped)} secrets-only workspace(s), no template, nothing runs: "
                      f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}")
        con.print(f"{sum(c.ok for c in checks)}/{len(checks)} workspaces passed"
                  + ("" if checks else ": nothing to verify"))
    sys.exit(0 if ok else EXIT_FAILURE)


@click.command("demo")
@click.option("--templates", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Templates folder (default: the repo's examples/templates).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Use and keep this data folder instead of a throwaway one.")
@click.option("--json", "as_json", is_flag=True, help="A JSON report on stdout.")
def demo(templates: Path | None, keep: Path | None, as_json: bool) -> None:
    """The whole scenario end to end on the example templates, with its own
    control plane and a throwaway data folder: push a canary over HTTP, then
    check the agent after recreate, restart and a wiped /configs. The template
    without the guard is expected to fail; exit 0 when every result is as
    expected."""
    import json

    from secretsd.acceptance.demo import render, run_demo, to_dict
    from secretsd.runtime.base import WorkspaceError
    from secretsd.runtime.catalog import default_templates
    from secretsd.runtime.sandbox import SandboxRuntime

    _need_root("demo")
    try:
        SandboxRuntime.check()
    except WorkspaceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    tdir = templates or default_templates()
    if tdir is None:
        raise click.UsageError("no examples/templates here: pass --templates DIR")
    if not as_json:
        click.echo(f"secretsd demo: one workspace per template in {tdir}, a control plane of its own ...", err=True)
    rows = run_demo(tdir.resolve(), keep=keep)
    report = to_dict(rows)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        con = _console()
        render(rows, con)
        good = sum(r.as_expected for r in rows)
        failing = [r.template for r in rows if not r.passed and r.as_expected]
        note = f" ({', '.join(failing)} fails as expected: its entrypoint has no guard)" if failing else ""
        verdict = "[green]every result as expected[/]" if report["ok"] else "[red]some results NOT as expected[/]"
        con.print(f"{good}/{len(rows)} results as expected{note}: {verdict}")
    sys.exit(0 if report["ok"] else EXIT_FAILURE)


commands = [verify_restart, demo]
