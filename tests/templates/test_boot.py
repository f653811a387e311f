"""Patched templates boot in the local sandbox and the agent sees a pushed secret.

Uses the runtime's SandboxRuntime (bubblewrap + gosu, root only) and the
example base image; skipped with the reason when the host cannot run it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest

from secretsd.templates import patch
from secretsd.templates.audit import audit_path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
LOAD_SH = REPO / "src" / "secretsd" / "format" / "sh" / "load.sh"
IMAGES = {"secretsd-examples/agent-runtime": EXAMPLES / "agent"}


def _why_not() -> str | None:
    try:
        from secretsd.runtime.base import WorkspaceError
        from secretsd.runtime.sandbox import SandboxRuntime
    except ImportError as exc:
        return f"secretsd.runtime has no usable sandbox yet ({exc})"
    try:
        SandboxRuntime.check()
    except WorkspaceError as exc:
        return str(exc)
    if not LOAD_SH.is_file():
        return f"{LOAD_SH} not written yet"
    if not (EXAMPLES / "agent" / "Dockerfile").is_file():
        return "examples/agent (the base image of the boot templates) is missing"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def _write_secrets(configs: Path, values: dict[str, bytes]) -> None:
    d = configs / "secrets.d"
    d.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (d / name).write_bytes(value)
        os.chmod(d / name, 0o600)
        os.chown(d / name, 1000, 1000)
    shutil.copyfile(LOAD_SH, d / "load.sh")
    os.chmod(d / "load.sh", 0o644)
    os.chmod(d, 0o700)
    os.chown(d, 1000, 1000)


def _templates(tmp: Path) -> dict[str, Path]:
    """Unpatched shapes on the example base image: shape 1 without the guard,
    a program entrypoint (shape 3), and a guard after the exec."""
    out = {}
    out["no-guard"] = tmp / "no-guard"
    shutil.copytree(EXAMPLES / "templates" / "no-guard", out["no-guard"])
    prog = tmp / "program"
    prog.mkdir()
    (prog / "Dockerfile").write_text(
        'FROM secretsd-examples/agent-runtime:1\nUSER root\nENTRYPOINT ["agent-runtime"]\nCMD ["--serve"]\n')
    out["program"] = prog
    late = tmp / "late"
    late.mkdir()
    (late / "Dockerfile").write_text(
        "FROM secretsd-examples/agent-runtime:1\nCOPY entry.sh /entry.sh\nRUN chmod +x /entry.sh\n"
        'ENTRYPOINT ["/entry.sh"]\n')
    (late / "entry.sh").write_text(  # guard appended after the exec: never runs
        '#!/bin/sh\nset -e\necho "boot: ${API_KEY:+key present}"\n'
        'exec gosu agent agent-runtime --serve\n'
        "if [ -f /configs/secrets.d/load.sh ]; then . /configs/secrets.d/load.sh; fi\n")
    os.chmod(late / "entry.sh", 0o644)
    out["late"] = late
    return out


@pytest.mark.parametrize("name", ["no-guard", "program", "late"])
def test_patched_template_boots_and_agent_sees_pushed_secret(tmp_path: Path, name: str) -> None:
    from secretsd.runtime.base import WorkspaceSpec
    from secretsd.runtime.sandbox import SandboxRuntime

    tpl = _templates(tmp_path / "tpl")[name]
    assert not audit_path(tpl).compliant
    rt = SandboxRuntime(tmp_path / "data", images=IMAGES, stop_timeout=3.0)
    value = f"pushed-{secrets.token_hex(8)}".encode()
    configs = tmp_path / "data" / "workspaces" / name / "configs"
    _write_secrets(configs, {"API_KEY": value})

    # Before the patch the agent does not get the pushed value...
    rt.provision(WorkspaceSpec(id=f"u-{name}", template=str(tpl), env={"API_KEY": "create-time"},
                               configs_dir=configs))
    try:
        assert rt.main_environ(f"u-{name}")["API_KEY"] == b"create-time"
    finally:
        rt.remove(f"u-{name}")

    # ... after it, it does.
    p = patch.plan(tpl)
    patch.write(tpl, p.changes)
    assert audit_path(tpl).compliant
    rt.provision(WorkspaceSpec(id=f"p-{name}", template=str(tpl), env={"API_KEY": "create-time"},
                               configs_dir=configs))
    try:
        env = rt.main_environ(f"p-{name}")
        assert env["API_KEY"] == value  # the pushed value wins over the create-time one
        rt.restart(f"p-{name}", "recreate")
        assert rt.main_environ(f"p-{name}")["API_KEY"] == value
    finally:
        rt.remove(f"p-{name}")
