"""Pushed secrets reach the agent's main process through the HTTP API and
real sandboxes: recreate, restart, wiped /configs, stopped workspaces,
deletes, the double guard, ``set -x``, isolation, template names."""

from __future__ import annotations

import stat

import pytest

from secretsd.acceptance.client import ApiFailure, Client

from .conftest import Server, needs_sandbox

pytestmark = needs_sandbox

GUARDED = ("sh-reexec", "bash-strict", "program-entrypoint")


@pytest.mark.parametrize("template", GUARDED)
def test_push_then_recreate_and_restart(server: Server, client: Client, template: str) -> None:
    ws = f"e2e-{template}"
    client.create(ws, template=template, env={"API_KEY": "create-time", "KEEP": "k"})
    v1, v2 = server.canary("v1"), server.canary("v2")
    r = client.push(ws, {"API_KEY": v1})
    assert r["persisted"] is True and r["restarted"] is False
    assert client.restart(ws, "recreate")["restarted"] is True
    env = server.env(ws)
    assert env["API_KEY"] == v1.encode()  # byte-exact, pushed value over the create-time one
    assert env["KEEP"] == b"k"
    # "restart": true in the push: one restart for the batch, after the write
    before = server.rt.status(ws).restarts
    r = client.push(ws, {"API_KEY": v2, "OTHER": "o"}, restart=True, mode="restart")
    assert r["restarted"] is True
    assert server.rt.status(ws).restarts == before + 1
    env = server.env(ws)
    assert env["API_KEY"] == v2.encode() and env["OTHER"] == b"o"
    server.wait_ready(ws)
    server.assert_no_leak(str(r))


def test_wiped_configs_heal_from_the_store(server: Server, client: Client) -> None:
    import shutil

    ws = "e2e-wipe"
    client.create(ws, template="sh-reexec")
    v = server.canary("wipe")
    client.push(ws, {"API_KEY": v})
    shutil.rmtree(server.configs(ws))  # the platform deleted the volume
    client.restart(ws, "recreate")
    assert server.env(ws)["API_KEY"] == v.encode()
    assert (server.configs(ws) / "secrets.d" / "load.sh").is_file()
    shutil.rmtree(server.configs(ws) / "secrets.d")  # again, with the engine's own restart
    client.restart(ws, "restart")
    assert server.env(ws)["API_KEY"] == v.encode()
    server.assert_no_leak()


def test_pushed_while_stopped_is_there_at_next_start(server: Server, client: Client) -> None:
    ws = "e2e-stopped"
    client.create(ws, template="bash-strict")
    assert client.stop(ws)["state"] == "stopped"
    v = server.canary("stopped")
    assert client.push(ws, {"OPENAI_API_KEY": v})["persisted"] is True
    assert server.rt.status(ws).state == "stopped"  # a push never starts a workspace
    assert client.start(ws)["state"] == "running"
    assert server.env(ws)["OPENAI_API_KEY"] == v.encode()
    log = server.wait_ready(ws, "[boot] set: OPENAI_API_KEY")
    server.assert_no_leak(log)


def test_deleted_key_is_gone_after_restart(server: Server, client: Client) -> None:
    ws = "e2e-delete"
    client.create(ws, template="program-entrypoint", env={"API_KEY": "create-time"})
    v = server.canary("del")
    client.push(ws, {"API_KEY": v, "GONE": v})
    client.restart(ws, "recreate")
    env = server.env(ws)
    assert env["API_KEY"] == v.encode() and env["GONE"] == v.encode()
    client.delete_key(ws, "GONE")
    client.delete_key(ws, "API_KEY")
    client.restart(ws, "restart")  # even the engine's restart (old environment) loses them
    env = server.env(ws)
    assert "GONE" not in env
    assert env["API_KEY"] == b"create-time"  # the create-time value is back
    server.assert_no_leak()


def test_guard_runs_twice_without_harm(server: Server, client: Client) -> None:
    ws = "e2e-twice"
    client.create(ws, template="sh-reexec", env={"ENTRYPOINT_TRACE": "1"})
    key, tok = server.canary("key"), server.canary("tok")
    client.push(ws, {"API_KEY": key, "GIT_TOKEN": tok}, restart=True)
    log = server.wait_ready(ws)
    assert log.count("exec gosu agent /entrypoint.sh") == 1  # root pass re-exec'd as the agent
    env = server.env(ws)
    assert env["API_KEY"] == key.encode() and env["GIT_TOKEN"] == tok.encode()
    pid = server.rt.main_pid(ws)
    uid = next(int(ln.split()[1]) for ln in open(f"/proc/{pid}/status") if ln.startswith("Uid:"))
    assert uid == 1000
    d = server.configs(ws) / "secrets.d"  # the root pass's chown -R left the contract's modes
    assert (d.stat().st_uid, stat.S_IMODE(d.stat().st_mode)) == (1000, 0o700)
    netrc = server.rt.rootfs(ws) / "home/agent/.netrc"
    assert tok.encode() in netrc.read_bytes()
    server.assert_no_leak(log)


def test_set_x_entrypoint_logs_no_value(server: Server, client: Client) -> None:
    ws = "e2e-trace"
    client.create(ws, template="trace-first")
    v = server.canary("trace")
    client.push(ws, {"API_KEY": v, "GIT_TOKEN": v}, restart=True)
    log = server.wait_ready(ws)
    assert log.count(". /configs/secrets.d/load.sh") == 2  # load.sh ran traced, in both passes
    log = server.console(ws)
    assert server.env(ws)["API_KEY"] == v.encode()
    server.assert_no_leak(log)


def test_sandbox_isolation(server: Server, client: Client) -> None:
    other = "e2e-victim"
    client.create(other, template="sh-reexec")
    secret = server.canary("victim")
    client.push(other, {"API_KEY": secret})
    hidden = [
        server.configs(other), server.configs(other) / "secrets.d" / "API_KEY", server.data,
        server.data / "admin.token", server.data / "encryption.key", server.data / "secretsd.db",
        server.data / "runtime", "/configs/../workspaces", "/work", "/root/.ssh",
    ]
    ws = "e2e-probe"
    client.create(ws, template="probe", env={"PROBE_PATHS": " ".join(str(p) for p in hidden)})
    log = server.wait_ready(ws, "probe ready")
    for p in hidden:
        assert f"probe hidden {p}" in log, p
    procs = int(next(ln.split()[2] for ln in log.splitlines() if ln.startswith("probe procs")))
    assert procs < 10  # its own PID namespace: no other workspace's processes
    assert "probe usr readonly" in log
    # Its /configs is its own folder only.
    names = {p.name for p in (server.configs(ws) / "secrets.d").iterdir()} if \
        (server.configs(ws) / "secrets.d").exists() else set()
    assert "API_KEY" not in names
    server.assert_no_leak(log)


def test_template_names_only(server: Server, client: Client) -> None:
    for bad in ("../../etc", "/etc", "sh-reexec/../no-guard", ".", "..", "nope"):
        with pytest.raises(ApiFailure) as e:
            client.create("e2e-bad", template=bad)
        assert e.value.status == 400, (bad, e.value)
        assert "template" in e.value.message
    with pytest.raises(ApiFailure) as e:
        client.workspace("e2e-bad")
    assert e.value.status == 404  # nothing half-created
    # The API's longest id works with the runtime too (the hostname is cut to 63).
    long_id = "L" + "x" * 127
    client.create(long_id, template="program-entrypoint")
    assert server.rt.status(long_id).state == "running"
    assert server.env(long_id)["HOSTNAME"] == long_id[:63].encode()
    client.delete(long_id)
    assert server.rt.status(long_id).state == "absent"
    # Without a template: secrets only; restarting it is a clear 409.
    client.create("e2e-secrets-only")
    with pytest.raises(ApiFailure) as e:
        client.restart("e2e-secrets-only")
    assert e.value.status == 409 and "no template" in e.value.message


def test_runtime_state_lost_restart_provisions_again(server: Server, client: Client) -> None:
    ws = "e2e-lost"
    client.create(ws, template="sh-reexec", env={"SNAP": "s"})
    v = server.canary("lost")
    client.push(ws, {"API_KEY": v})
    server.rt.remove(ws)  # the runtime forgot it (its state folder wiped)
    assert client.workspace(ws)["state"] == "absent"
    client.restart(ws, "recreate")
    env = server.env(ws)
    assert env["API_KEY"] == v.encode() and env["SNAP"] == b"s"
