"""The sandbox itself, with a probe template: isolation, lifecycle,
supervision, state across control-plane processes, and no values where
they do not belong."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secretsd.runtime import procfs
from secretsd.runtime.base import (
    InvalidWorkspace,
    WorkspaceError,
    MainProcessUnavailable,
    WorkspaceExists,
    WorkspaceNotFound,
    WorkspaceSpec,
)
from secretsd.runtime.sandbox import SandboxRuntime

from .conftest import IMAGES, PROBE, REPO, Sandboxes, canary, needs_sandbox

pytestmark = needs_sandbox


def _probe(sandboxes: Sandboxes, id: str) -> dict[str, str]:
    starts = sandboxes.log(id).count("--- secretsd sandbox:")  # one per start
    log = sandboxes.wait_log(id, "probe ready", count=starts)
    out: dict[str, str] = {}
    for line in log.split("--- secretsd sandbox:")[-1].splitlines():
        if line.startswith("probe "):
            _, key, *rest = line.split(" ", 2)
            out[key if key not in ("visible", "hidden") else rest[0]] = key if key in ("visible", "hidden") else " ".join(rest)
    return out


def _tree(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += procfs.children(p)
    return out


def test_isolation(sandboxes: Sandboxes, tmp_path: Path) -> None:
    host_secret = tmp_path / "host-only"
    host_secret.write_text("x")
    other = sandboxes.configs("other")
    paths = [str(sandboxes.data), str(other), str(host_secret), str(REPO), "/work", "/root/.pyenv",
             "/tmp/" + tmp_path.name]
    env = {"PROBE_PATHS": " ".join(paths)}
    sandboxes.provision("other", PROBE, env=env)
    sandboxes.provision("iso", PROBE, env=env)
    p = _probe(sandboxes, "iso")
    for path in paths:
        assert p[path] == "hidden", path
    assert p["hostname"] == "iso"
    assert p["pid"] == "1"  # PID namespace: the entrypoint is PID 1
    assert int(p["procs"]) <= 6  # only its own processes
    assert p["rootls"].strip() == "0"  # not the host's /root
    assert p["usr"] == "readonly"
    assert p["configs"] == "writable"
    assert p["mknod"] == "denied" and p["mount"] == "denied"
    assert p["cwd"] == "/srv/probe"
    # Each workspace sees its own /configs, and nothing of the other's.
    (sandboxes.configs("iso") / "mine").write_text("iso")
    assert not (other / "mine").exists()


def test_environment_is_fresh_snapshot_plus_image(sandboxes: Sandboxes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROL_PLANE_ONLY", "must-not-leak")
    sandboxes.provision("envp", PROBE, env={"CREATE": "c", "PROBE_IMAGE_ENV": "overridden"})
    _probe(sandboxes, "envp")
    env = sandboxes.rt.main_environ("envp", settle=0)
    assert env["CREATE"] == b"c"
    assert env["PROBE_IMAGE_ENV"] == b"overridden"  # create-time beats the Dockerfile's ENV
    assert env["HOME"] == b"/root" and env["HOSTNAME"] == b"envp"
    assert env["PATH"].startswith(b"/usr/local/sbin:/usr/local/bin")
    assert "CONTROL_PLANE_ONLY" not in env


def test_lifecycle_layer_and_exit_codes(sandboxes: Sandboxes) -> None:
    rt = sandboxes.rt
    sandboxes.provision("life", PROBE)
    assert _probe(sandboxes, "life")["layer"] == "none"
    rt.stop("life")
    assert rt.status("life").state == "stopped"
    rt.start("life")
    assert rt.status("life").state == "running"
    assert _probe(sandboxes, "life")["layer"] != "none"  # start keeps the container layer
    rt.restart("life", "restart")
    assert _probe(sandboxes, "life")["layer"] != "none"  # so does restart
    rt.restart("life", "recreate")
    assert _probe(sandboxes, "life")["layer"] == "none"  # recreate starts from the template
    assert rt.status("life").restarts == 2
    rt.remove("life")
    assert rt.status("life").state == "absent"

    sandboxes.provision("quits", PROBE, env={"PROBE_EXIT": "3"})
    deadline = time.monotonic() + 10
    while rt.status("quits").state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    st = rt.status("quits")
    assert (st.state, st.exit_code) == ("exited", 3)
    with pytest.raises(MainProcessUnavailable):
        rt.main_environ("quits")


def test_tree_dies_and_new_process_finds_workspaces(sandboxes: Sandboxes) -> None:
    sandboxes.provision("tree", PROBE, env={"PROBE_IGNORE_TERM": "1"})
    _probe(sandboxes, "tree")
    pid = sandboxes.rt.status("tree").pid
    assert pid is not None
    tree = _tree(pid)
    assert len(tree) >= 3  # the probe, its detached `setsid sleep`, its loop's sleep
    # A new control-plane process: finds the running workspace by its state.
    fresh = SandboxRuntime(sandboxes.data, images=IMAGES, stop_timeout=1.0)
    assert fresh.status("tree").state == "running"
    assert fresh.status("tree").pid == pid
    fresh.stop("tree")  # the probe shell ignores SIGTERM as PID 1: SIGKILL after the grace
    assert all(procfs.start_time(p) is None for p in tree)
    assert sandboxes.rt.status("tree").state == "stopped"


def test_no_values_in_argv_logs_or_errors(sandboxes: Sandboxes) -> None:
    value = canary("argv")
    sandboxes.provision("argv", PROBE, env={"CREATE_SECRET": value.decode()})
    _probe(sandboxes, "argv")
    needle = value.split(b"\n")[0]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                assert needle not in Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
    wdir = sandboxes.data / "runtime" / "sandbox" / "argv"
    assert stat.S_IMODE(wdir.stat().st_mode) == 0o700
    for name in ("spec.json", "env", "state.json", "console.log"):
        assert stat.S_IMODE((wdir / name).stat().st_mode) == 0o600
    for name in ("state.json", "console.log", "status.jsonl"):
        assert needle not in (wdir / name).read_bytes()
    bad = "x-" + value.decode().replace("\n", "\0")
    with pytest.raises(InvalidWorkspace) as err:
        sandboxes.provision("nul", PROBE, env={"BAD": bad})
    assert needle.decode() not in str(err.value)


def test_errors(sandboxes: Sandboxes, tmp_path: Path) -> None:
    rt = sandboxes.rt
    assert rt.status("ghost").state == "absent"
    for call in (rt.start, rt.stop, rt.remove, rt.main_environ):
        with pytest.raises(WorkspaceNotFound):
            call("ghost")
    with pytest.raises(InvalidWorkspace):
        sandboxes.provision("../up", PROBE)
    with pytest.raises(InvalidWorkspace):
        sandboxes.provision("nodockerfile", tmp_path)
    with pytest.raises(InvalidWorkspace):
        rt.provision(WorkspaceSpec(id="notemplate", template=None, configs_dir=tmp_path / "c"))
    sandboxes.provision("dup", PROBE, env={"PROBE_EXIT": "0"})
    with pytest.raises(WorkspaceExists):
        sandboxes.provision("dup", PROBE)
    with pytest.raises(InvalidWorkspace):
        rt.restart("dup", "reboot")  # type: ignore[arg-type]


def test_workspace_outlives_the_process_that_started_it(sandboxes: Sandboxes) -> None:
    """The control plane may restart: its workspaces keep running, root or not."""
    code = (
        "import sys; from pathlib import Path\n"
        "from secretsd.runtime.sandbox import SandboxRuntime\n"
        "from secretsd.runtime.base import WorkspaceSpec\n"
        "rt = SandboxRuntime(sys.argv[1])\n"
        "rt.provision(WorkspaceSpec(id='orphan', template=sys.argv[2], env={}, configs_dir=Path(sys.argv[3])))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(sandboxes.data), str(PROBE), str(sandboxes.configs("orphan"))],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    _probe(sandboxes, "orphan")
    time.sleep(0.3)
    st = sandboxes.rt.status("orphan")
    assert st.state == "running" and procfs.start_time(st.pid or 0) is not None


def test_planted_symlinks_in_the_layer_do_not_reach_the_host(sandboxes: Sandboxes, tmp_path: Path) -> None:
    """Root inside the workspace owns its layer; a symlink put where a mount
    point goes must not make the next start write on the host."""
    victim = tmp_path / "victim"
    victim.mkdir()
    sandboxes.provision("plant", PROBE)
    _probe(sandboxes, "plant")
    sandboxes.rt.stop("plant")
    layer = sandboxes.rt.rootfs("plant")
    # bwrap sets mounts up with the host's root at /oldroot: both spellings.
    plants = {"usr/local/share": victim, "usr/local/man": victim, "proc": victim,
              "configs": Path("/oldroot" + str(victim)), "usr/local/etc": Path("/oldroot" + str(victim)),
              "etc/ld.so.cache": Path("/oldroot" + str(victim / "cache"))}
    for rel, to in plants.items():
        target = layer / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(to)
    sandboxes.rt.start("plant")
    assert _probe(sandboxes, "plant")["usr"] == "readonly"
    assert list(victim.iterdir()) == []


def test_wiped_configs_folder_does_not_block_a_restart(sandboxes: Sandboxes) -> None:
    sandboxes.provision("wiped", PROBE)
    _probe(sandboxes, "wiped")
    shutil.rmtree(sandboxes.configs("wiped"))
    sandboxes.rt.restart("wiped", "restart")
    assert _probe(sandboxes, "wiped")["configs"] == "writable"


def test_stop_does_not_wait_out_the_grace_for_an_init_without_handler(sandboxes: Sandboxes) -> None:
    """PID 1 of a namespace never gets a SIGTERM it has no handler for: SIGKILL
    after a short window (procfs.NO_HANDLER_WINDOW), not the whole grace; an
    init with a handler still stops gracefully."""
    import time

    rt = SandboxRuntime(sandboxes.data, images=IMAGES, stop_timeout=8.0)
    sandboxes.provision("nohandler", PROBE, env={"PROBE_IGNORE_TERM": "1"})
    _probe(sandboxes, "nohandler")
    t0 = time.monotonic()
    rt.stop("nohandler")
    assert time.monotonic() - t0 < procfs.NO_HANDLER_WINDOW + 2.0
    assert rt.status("nohandler").state == "stopped"
    sandboxes.provision("handler", PROBE)
    _probe(sandboxes, "handler")
    t0 = time.monotonic()
    rt.stop("handler")
    assert time.monotonic() - t0 < 3.0
    assert rt.status("handler").exit_code == 0  # its trap ran: `exit 0`, not a SIGKILL


def test_failed_provision_leaves_nothing_behind(sandboxes: Sandboxes, tmp_path: Path) -> None:
    tpl = tmp_path / "tpl" / "evil"
    tpl.mkdir(parents=True)
    (tmp_path / "tpl" / "outside").write_text("x")
    (tpl / "Dockerfile").write_text('FROM debian\nCOPY ../outside /x\nENTRYPOINT ["/bin/true"]\n')
    with pytest.raises(WorkspaceError):
        sandboxes.provision("evil", tpl)
    assert not (sandboxes.data / "runtime" / "sandbox" / "evil").exists()
    assert "evil" not in sandboxes.rt.list()
