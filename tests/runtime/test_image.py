"""Template folders as images: Dockerfile settings, local bases, and the
layer the sandbox lays out (modes, --chmod, RUN chmod, refusals)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from secretsd.runtime import image as img
from secretsd.runtime.base import InvalidWorkspace

from .conftest import IMAGES, TEMPLATES

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="staging chowns files: needs root")


def test_resolve_examples() -> None:
    got = {t: img.resolve(TEMPLATES / t, IMAGES) for t in ("sh-reexec", "bash-strict", "program-entrypoint", "no-guard")}
    assert got["sh-reexec"].argv == ("/entrypoint.sh", "agent-runtime", "--serve")
    assert got["sh-reexec"].workdir == "/workspace" and got["sh-reexec"].user == "root"
    assert got["bash-strict"].argv == ("/usr/local/bin/start.sh",)  # new ENTRYPOINT resets the base's CMD
    assert got["program-entrypoint"].argv == ("/usr/local/bin/with-secrets", "agent-runtime", "--serve")
    for image in got.values():
        assert len(image.layers) == 2  # the local base, then the template
        assert image.env["PYTHONUNBUFFERED"] == "1"  # the base's ENV is inherited


def test_unknown_base_is_the_host(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text('FROM python:3.12-slim\nENV A=1\nCMD sleep 1\n')
    image = img.resolve(tmp_path, IMAGES)
    assert len(image.layers) == 1
    assert image.argv == ("/bin/sh", "-c", "sleep 1")


@root_only
def test_stage_modes_chmod_and_run_chmod(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    placed = img.stage(rootfs, img.resolve(TEMPLATES / "bash-strict", IMAGES))
    assert "/usr/local/bin/start.sh" in placed and "/usr/local/lib/agent/common.sh" in placed
    mode = lambda p: stat.S_IMODE((rootfs / p).stat().st_mode)  # noqa: E731
    assert mode("usr/local/bin/start.sh") == 0o755  # stored 0644, RUN chmod 0755
    assert mode("usr/local/lib/agent/common.sh") == 0o644  # kept as stored
    assert mode("usr/local/bin/agent-runtime") == 0o755
    assert (rootfs / "home/agent").stat().st_uid == 1000
    assert "agent:x:1000:1000:" in (rootfs / "etc/passwd").read_text()

    img.stage(rootfs, img.resolve(TEMPLATES / "sh-reexec", IMAGES))
    assert mode("entrypoint.sh") == 0o755  # stored 0644, RUN chmod +x
    assert (rootfs / "workspace").is_dir()  # WORKDIR exists


@root_only
def test_copy_flags_globs_and_dirs(tmp_path: Path) -> None:
    t = tmp_path / "t"
    (t / "conf").mkdir(parents=True)
    (t / "conf" / "a.ini").write_text("a")
    (t / "x.sh").write_text("#!/bin/sh\n")
    (t / "y.sh").write_text("#!/bin/sh\n")
    (t / "Dockerfile").write_text(
        "FROM debian\nWORKDIR /app\n"
        "COPY --chown=agent:agent --chmod=0700 x.sh ./run.sh\n"
        "COPY *.sh /opt/scripts/\n"
        "COPY conf /etc/app/\n"
        "RUN chmod u+x,g-r /opt/scripts/y.sh && chmod -R 750 /etc/app\n"
        "CMD [\"./run.sh\"]\n"
    )
    rootfs = tmp_path / "rootfs"
    img.stage(rootfs, img.resolve(t))
    run = (rootfs / "app/run.sh").stat()
    assert (run.st_uid, run.st_gid, stat.S_IMODE(run.st_mode)) == (1000, 1000, 0o700)
    assert (rootfs / "opt/scripts/x.sh").is_file()
    assert stat.S_IMODE((rootfs / "opt/scripts/y.sh").stat().st_mode) == 0o704
    assert stat.S_IMODE((rootfs / "etc/app/a.ini").stat().st_mode) == 0o750


@root_only
@pytest.mark.parametrize("line", ["COPY ../outside /x", "COPY link /x", "ADD https://example.com/f /x", "COPY missing /x"])
def test_refusals(tmp_path: Path, line: str) -> None:
    (tmp_path / "outside").write_text("host secret")
    t = tmp_path / "t"
    t.mkdir()
    (t / "link").symlink_to(tmp_path / "outside")
    (t / "Dockerfile").write_text(f"FROM debian\n{line}\nCMD [\"true\"]\n")
    with pytest.raises(InvalidWorkspace) as err:
        img.stage(tmp_path / "rootfs", img.resolve(t))
    assert "Dockerfile:2" in str(err.value)
    assert "host secret" not in str(err.value)


@root_only
def test_no_writes_through_template_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "hostdir"
    target.mkdir()
    t = tmp_path / "t"
    (t / "tree").mkdir(parents=True)
    (t / "tree" / "evil").symlink_to(target)  # a symlink inside a copied folder
    (t / "f").write_text("x")
    (t / "Dockerfile").write_text("FROM debian\nCOPY tree /opt/\nCOPY f /opt/evil/f\nCMD [\"true\"]\n")
    with pytest.raises(InvalidWorkspace):
        img.stage(tmp_path / "rootfs", img.resolve(t))
    assert not (target / "f").exists()


def test_example_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    scripts = [*TEMPLATES.glob("*/entrypoint.sh"), TEMPLATES / "bash-strict/start.sh",
               TEMPLATES / "bash-strict/lib/common.sh", Path(__file__).parent / "templates/probe/probe.sh"]
    # SC1091: the sourced files exist only inside the workspace.
    res = subprocess.run(["shellcheck", "-e", "SC1091", *map(str, scripts)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    for s in scripts:  # what ships as sh must be POSIX sh
        if s.read_text().startswith("#!/bin/sh"):
            assert subprocess.run(["shellcheck", "-s", "sh", "-e", "SC1091", str(s)]).returncode == 0
