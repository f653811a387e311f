"""The Docker runtime: runs only where an engine is reachable."""

from __future__ import annotations

import pytest

from secretsd.runtime.base import RuntimeUnavailable, WorkspaceSpec
from secretsd.runtime.docker import DockerRuntime

from .conftest import IMAGES, TEMPLATES, canary, needs_loader, write_secrets


def _engine() -> str | None:
    try:
        DockerRuntime().client
    except RuntimeUnavailable as exc:
        return str(exc)
    return None


pytestmark = [pytest.mark.skipif(_engine() is not None, reason=_engine() or ""), needs_loader]


@pytest.mark.timeout(900)
def test_docker_recreate_and_restart_keep_pushed_secret(tmp_path) -> None:
    rt = DockerRuntime(images=IMAGES)
    configs = tmp_path / "configs"
    v1, v2 = canary("d1"), canary("d2")
    write_secrets(configs, {"API_KEY": v1})
    rt.provision(WorkspaceSpec(id="secretsd-test", template=str(TEMPLATES / "sh-reexec"), env={"A": "1"},
                               configs_dir=configs))
    try:
        assert rt.main_environ("secretsd-test")["API_KEY"] == v1
        write_secrets(configs, {"API_KEY": v2})
        for mode in ("recreate", "restart"):
            rt.restart("secretsd-test", mode)  # type: ignore[arg-type]
            env = rt.main_environ("secretsd-test")
            assert env["API_KEY"] == v2 and env["A"] == b"1"
        assert rt.status("secretsd-test").state == "running"
    finally:
        rt.remove("secretsd-test")
    assert rt.status("secretsd-test").state == "absent"
