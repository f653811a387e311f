"""``secretsd serve --demo``: one workspace per example template, through the
API of the server that just started, then what to try next.

Idempotent: a workspace that already exists (an earlier ``make run``) is
reused when it runs, restarted (which re-materialises its folder) when not.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from secretsd.acceptance.client import ApiFailure, Client

Echo = Callable[[str], None]


def wait_ready(url: str, timeout: float = 60.0, alive: Callable[[], bool] = lambda: True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(url.rstrip("/") + "/healthz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def provision(client: Client, templates: list[str]) -> list[tuple[str, str]]:
    """(workspace, what happened) per template; the workspace id is the template name."""
    rows = []
    for name in templates:
        try:
            client.create(name, template=name)
            rows.append((name, "provisioned"))
            continue
        except ApiFailure as exc:
            if exc.status != 409:
                rows.append((name, f"not provisioned: {exc}"))
                continue
        try:  # it exists: reuse a running one, restart the others
            state = client.workspace(name).get("state")
            if state == "running":
                rows.append((name, "running (reused)"))
            else:
                client.restart(name, "recreate")
                rows.append((name, f"was {state or 'unknown'}: restarted"))
        except ApiFailure as exc:
            rows.append((name, f"exists, but could not be restarted: {exc}"))
    return rows


def next_steps(url: str, data: Path, ws: str, token_file: Path | None) -> str:
    secretsd = _secretsd_cmd()
    d = shlex.quote(str(data))
    if token_file is not None:
        auth = f'-H "Authorization: Bearer $(cat {shlex.quote(str(token_file))})"'
    else:
        auth = '-H "Authorization: Bearer $SECRETSD_ADMIN_TOKEN"'
    base = f"{url}/cp/admin/workspaces/{ws}"
    return "\n".join([
        "Try it (the token is read from its file, never printed):",
        "",
        "  # 1. push a secret (stored encrypted, written through to the workspace's secrets.d)",
        f"  curl -sS {auth} -H 'Content-Type: application/json' \\",
        f"       -X POST {base}/env -d '{{\"env\": {{\"OPENAI_API_KEY\": \"sk-demo-123\"}}}}'",
        "",
        "  # 2. restart the workspace (recreate: a fresh environment from the create-time snapshot)",
        f"  curl -sS {auth} -H 'Content-Type: application/json' \\",
        f"       -X POST {base}/restart -d '{{\"mode\": \"recreate\"}}'",
        "",
        "  # 3. see it in the agent: its main process's environment, read on the host (root)",
        f"  {secretsd} workspace env {ws} --data {d} --json | grep OPENAI_API_KEY",
        f"  {secretsd} workspace logs {ws} --data {d}      # the agent reports names + sha256[:8]",
        f"  {secretsd} workspace status --data {d}",
        "",
        "  # the acceptance test on every workspace (no-guard is expected to fail)",
        f"  {secretsd} verify-restart --url {url} --all --data {d}",
        "",
        "Ctrl-C stops the control plane; the workspaces keep running (the next `make run` reuses them).",
    ])


def _secretsd_cmd() -> str:
    import sys

    exe = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if exe is not None and exe.name == "secretsd":
        try:
            return shlex.quote(str(exe.resolve().relative_to(Path.cwd()))) if exe.is_absolute() \
                else shlex.quote(str(exe))
        except ValueError:
            return shlex.quote(str(exe))
    return "secretsd"


def run_in_background(url: str, token: str, data: Path, templates: list[str], token_file: Path | None,
                      echo: Echo) -> threading.Thread:
    """Provision once the server answers, then print the next steps."""

    def work() -> None:
        if not wait_ready(url):
            echo("--demo: the control plane did not come up; no example workspaces provisioned")
            return
        echo(f"--demo: provisioning {len(templates)} example workspaces ...")
        with Client(url, token) as client:
            rows = provision(client, templates)
        width = max((len(w) for w, _ in rows), default=0)
        for ws, what in rows:
            echo(f"  {ws:<{width}}  {what}")
        ok = [ws for ws, what in rows if not what.startswith(("not ", "exists, but"))]
        if ok:
            pick = "sh-reexec" if "sh-reexec" in ok else ok[0]
            echo("")
            echo(next_steps(url, data, pick, token_file))

    t = threading.Thread(target=work, name="secretsd-demo-provision", daemon=True)
    t.start()
    return t
