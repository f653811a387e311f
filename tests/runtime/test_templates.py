"""The example templates in real sandboxes: a pushed secret reaches the
agent byte-exact and survives recreate and restart; the template without
the guard does not get it."""

from __future__ import annotations

import json
import stat
import time

import pytest

from secretsd.runtime import procfs

from .conftest import PROBE, Sandboxes, canary, needs_loader, needs_sandbox, write_secrets

pytestmark = [needs_sandbox, needs_loader]

#: template -> uid of its agent
GUARDED = {"sh-reexec": 1000, "bash-strict": 1000, "program-entrypoint": 0}

#: test-only: sh-reexec with `set -x` before the guard
TRACE_FIRST = PROBE.parent / "trace-first"


def _assert_no_values(text: str, *values: bytes) -> None:
    for v in values:
        for line in v.decode().splitlines():
            if "canary-" in line or "second line" in line:  # the random parts
                assert line.strip(' "') not in text, "a secret value leaked"


def _agent_uid(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


@pytest.mark.parametrize("template", GUARDED)
def test_pushed_secret_survives_recreate_and_restart(sandboxes: Sandboxes, template: str) -> None:
    id, rt = f"t-{template}", sandboxes.rt
    create, v1, v2, v3 = canary("create"), canary("v1"), canary("v2"), canary("v3")
    sandboxes.provision(id, template, env={"API_KEY": create.decode(), "CREATE_ONLY": "c"},
                        secrets={"API_KEY": v1})
    env = rt.main_environ(id)
    assert env["API_KEY"] == v1  # the pushed value overrides the create-time one
    assert env["CREATE_ONLY"] == b"c"
    pid = rt.main_pid(id)
    assert "agent-runtime" in " ".join(procfs.cmdline(pid))  # the process the chain exec'd into
    assert _agent_uid(pid) == GUARDED[template]

    write_secrets(sandboxes.configs(id), {"API_KEY": v2})  # the control plane re-materialises
    rt.restart(id, "recreate")
    assert rt.main_environ(id)["API_KEY"] == v2

    write_secrets(sandboxes.configs(id), {"API_KEY": v3})
    rt.restart(id, "restart")
    assert rt.main_environ(id)["API_KEY"] == v3

    write_secrets(sandboxes.configs(id), {})  # key deleted: the create-time value is back
    rt.restart(id, "restart")
    assert rt.main_environ(id)["API_KEY"] == create

    st = rt.status(id)
    assert (st.state, st.restarts) == ("running", 3)
    sandboxes.wait_log(id, "agent-runtime: ready", count=4)
    _assert_no_values(sandboxes.log(id), create, v1, v2, v3)


def test_no_guard_template_misses_pushed_secrets(sandboxes: Sandboxes) -> None:
    rt, pushed, only = sandboxes.rt, canary("pushed"), canary("only")
    sandboxes.provision("ng", "no-guard", env={"GIT_TOKEN": "create-time"},
                        secrets={"GIT_TOKEN": pushed, "API_KEY": only})
    for mode in (None, "recreate", "restart"):
        if mode:
            rt.restart("ng", mode)
        env = rt.main_environ("ng")
        assert env["GIT_TOKEN"] == b"create-time"
        assert "API_KEY" not in env


def test_guard_runs_twice_under_set_x_without_values(sandboxes: Sandboxes) -> None:
    """A test-only template that switches ``set -x`` on before the guard, so
    load.sh runs traced in both passes: the trace names no value."""
    rt, key, tok = sandboxes.rt, canary("key"), canary("tok")
    sandboxes.provision("twice", TRACE_FIRST, secrets={"API_KEY": key, "GIT_TOKEN": tok})
    log = sandboxes.wait_log("twice", "agent-runtime: ready")
    assert log.count(". /configs/secrets.d/load.sh") == 2  # root pass, then agent pass
    assert "exec gosu agent /entrypoint.sh" in log
    env = rt.main_environ("twice")
    assert env["API_KEY"] == key and env["GIT_TOKEN"] == tok
    _assert_no_values(log, key, tok)
    # The root pass's chown -R left the folder as the contract wants it.
    d = sandboxes.configs("twice") / "secrets.d"
    assert (d.stat().st_uid, stat.S_IMODE(d.stat().st_mode)) == (1000, 0o700)
    for name in ("API_KEY", "GIT_TOKEN"):
        s = (d / name).stat()
        assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (1000, 1000, 0o600)
    netrc = rt.rootfs("twice") / "home/agent/.netrc"
    assert tok in netrc.read_bytes()
    assert (netrc.stat().st_uid, stat.S_IMODE(netrc.stat().st_mode)) == (1000, 0o600)


def test_sh_reexec_guard_first_then_trace(sandboxes: Sandboxes) -> None:
    """The example itself: guard on its first line, ENTRYPOINT_TRACE read after
    it (so a pushed ENTRYPOINT_TRACE wins too); both passes run, nothing leaks."""
    rt, key = sandboxes.rt, canary("key")
    sandboxes.provision("first", "sh-reexec", env={"ENTRYPOINT_TRACE": "0"},
                        secrets={"API_KEY": key, "ENTRYPOINT_TRACE": b"1"})
    log = sandboxes.wait_log("first", "agent-runtime: ready")
    assert "exec gosu agent /entrypoint.sh" in log  # traced: the pushed toggle won over the create-time one
    assert ". /configs/secrets.d/load.sh" not in log  # the guard ran before tracing began
    assert rt.main_environ("first")["API_KEY"] == key
    _assert_no_values(log, key)


def test_bash_strict_credential_file_boot_log_and_smoke(sandboxes: Sandboxes) -> None:
    rt, cred = sandboxes.rt, b'{"type": "service_account",\n "private_key": "' + canary("pk") + b'"}\n'
    sandboxes.provision("bs", "bash-strict", secrets={"GCP_CREDENTIALS_JSON": cred})
    log = sandboxes.wait_log("bs", "agent-runtime: ready")
    assert "[boot] set: GCP_CREDENTIALS_JSON" in log
    assert "[boot] unset: OPENAI_API_KEY ANTHROPIC_API_KEY GIT_TOKEN" in log
    env = rt.main_environ("bs")
    path = env["GOOGLE_APPLICATION_CREDENTIALS"].decode()
    f = rt.rootfs("bs") / path.lstrip("/")
    assert f.read_bytes() == cred
    assert (f.stat().st_uid, stat.S_IMODE(f.stat().st_mode)) == (1000, 0o600)
    _assert_no_values(log, cred)

    sandboxes.provision("smoke", "bash-strict", env={"SMOKE": "1"}, secrets={})
    line = sandboxes.wait_log("smoke", "agent-runtime: ready").splitlines()[-1]
    report = json.loads(line.split("ready ", 1)[1])
    assert report["uid"] == 1000
    deadline = time.monotonic() + 10
    while rt.status("smoke").state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    st = rt.status("smoke")
    assert (st.state, st.exit_code) == ("exited", 0)


def test_writer_layout_with_every_guarded_template(sandboxes: Sandboxes) -> None:
    """The folder as the control plane will materialise it (generations,
    ..data links): what phase 2 hands the runtime."""
    writer = pytest.importorskip("secretsd.format.writer")
    rt = sandboxes.rt
    for template in GUARDED:
        id, v1, v2 = f"w-{template}", canary("w1"), canary("w2")
        folder = writer.SecretsDir(sandboxes.configs(id) / "secrets.d")
        folder.replace_all({"API_KEY": v1, "OTHER": b"x"})
        sandboxes.provision(id, template)
        assert rt.main_environ(id)["API_KEY"] == v1
        folder.replace_all({"API_KEY": v2})  # OTHER deleted, API_KEY changed
        rt.restart(id, "recreate")
        env = rt.main_environ(id)
        assert env["API_KEY"] == v2 and "OTHER" not in env
        rt.remove(id)
