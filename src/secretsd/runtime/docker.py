"""The Docker runtime: the same interface over the Docker Engine API.

One container per workspace, named ``secretsd-<id>``, labelled with the
workspace id. ``/configs`` is a bind mount of ``configs_dir``; the
with-secrets shim is bind-mounted read-only at /usr/local/bin/with-secrets
as in the sandbox. The template folder is built as the image
(``secretsd-ws/<id>``); local base images named in ``images`` are built
first under their name, so ``FROM secretsd-examples/agent-runtime:1`` works.

``recreate`` removes the container and creates it again from the stored
spec (env = create-time snapshot; Docker adds the image's ENV). ``restart``
is the engine's own restart: same container, same environment.

Everything the runtime needs later is in the container: labels (id,
configs folder, template, restart count) and its config env, which holds the
create-time snapshot (recreate takes it from there, minus the image's ENV).
A new control-plane process finds workspaces by label. Docker does not
record who stopped a container: ``stopped`` is reported for containers this
process stopped, ``exited`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from secretsd.runtime.base import (
    InvalidWorkspace,
    MainProcessUnavailable,
    RestartMode,
    RuntimeUnavailable,
    WorkspaceError,
    WorkspaceExists,
    WorkspaceNotFound,
    WorkspaceSpec,
    WorkspaceStatus,
    check_id,
    hostname_for,
)
from secretsd.runtime.image import resolve
from secretsd.runtime.sandbox import SHIM, SHIM_PATH

LABEL = "io.secretsd.workspace"


class DockerRuntime:
    name = "docker"

    def __init__(self, *, images: Mapping[str, str | Path] | None = None, stop_timeout: int = 5,
                 client: Any = None) -> None:
        self.images = {k: Path(v) for k, v in (images or {}).items()}
        self.stop_timeout = stop_timeout
        self._client = client
        self._stopped: set[str] = set()

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import docker  # the SDK; imported late so the sandbox never needs it

                self._client = docker.from_env(timeout=30)
                self._client.ping()
            except Exception as exc:  # the SDK raises many kinds: all mean "no engine"
                self._client = None
                raise RuntimeUnavailable("docker", f"no Docker engine reachable ({type(exc).__name__})") from None
        return self._client

    def provision(self, spec: WorkspaceSpec) -> None:
        check_id(spec.id)
        if spec.template is None:
            raise InvalidWorkspace(f"workspace {spec.id!r}: a template folder is needed")
        if self._find(spec.id) is not None:
            raise WorkspaceExists(spec.id)
        tag = self._build(spec.id, Path(spec.template))
        Path(spec.configs_dir).mkdir(parents=True, exist_ok=True)
        configs = Path(spec.configs_dir).resolve()
        self._create(spec.id, tag, dict(spec.env), configs, Path(spec.template).resolve()).start()

    def start(self, id: str) -> None:
        self._get(id).start()
        self._stopped.discard(id)

    def stop(self, id: str) -> None:
        self._get(id).stop(timeout=self.stop_timeout)
        self._stopped.add(id)

    def restart(self, id: str, mode: RestartMode) -> None:
        c = self._get(id)
        self._stopped.discard(id)
        if mode == "restart":
            c.restart(timeout=self.stop_timeout)
            return
        if mode != "recreate":
            raise InvalidWorkspace(f"restart mode must be recreate or restart, not {mode!r}")
        labels = c.labels
        env = _env_of(c)
        configs = Path(labels["io.secretsd.configs"])
        restarts = int(labels.get("io.secretsd.restarts", "0")) + 1
        template = Path(labels["io.secretsd.template"])
        c.remove(force=True)
        tag = self._build(id, template)
        self._create(id, tag, env, configs, template, restarts=restarts).start()

    def status(self, id: str) -> WorkspaceStatus:
        c = self._find(id)
        if c is None:
            return WorkspaceStatus(id=id, state="absent")
        c.reload()
        st = c.attrs["State"]
        running = st.get("Running", False)
        state = "running" if running else "stopped" if id in self._stopped else "exited"
        return WorkspaceStatus(
            id=id, state=state, pid=st.get("Pid") or None, started_at=_ts(st.get("StartedAt")),
            restarts=int(c.labels.get("io.secretsd.restarts", "0")) + int(c.attrs.get("RestartCount", 0)),
            exit_code=None if running else st.get("ExitCode"),
        )

    def remove(self, id: str) -> None:
        self._get(id).remove(force=True)
        self._stopped.discard(id)

    def main_environ(self, id: str) -> dict[str, bytes]:
        """PID 1 of the container is the process the entrypoint exec'd into;
        read its environment on the host through /proc (host root)."""
        c = self._get(id)
        c.reload()
        pid = c.attrs["State"].get("Pid")
        if not pid:
            raise MainProcessUnavailable(f"workspace {id!r} is not running")
        from secretsd.runtime import procfs

        try:
            return procfs.environ(procfs.settle_main(pid, 5.0))
        except OSError:
            raise MainProcessUnavailable(f"workspace {id!r}: cannot read its main process (host root, same host as the engine)") from None

    # -- internals ------------------------------------------------------------

    def _find(self, id: str) -> Any | None:
        check_id(id)
        found = self.client.containers.list(all=True, filters={"label": f"{LABEL}={id}"})
        return found[0] if found else None

    def _get(self, id: str) -> Any:
        c = self._find(id)
        if c is None:
            raise WorkspaceNotFound(id)
        return c

    def _build(self, id: str, template: Path) -> str:
        image = resolve(template, self.images)  # validates and finds local bases
        try:
            # Local bases, deepest first, tagged as their child's FROM says.
            for (folder, _), (_, child) in zip(image.layers, image.layers[1:]):
                self.client.images.build(path=str(folder), tag=child.base_image, rm=True)
            tag = f"secretsd-ws/{id.lower()}:latest"
            self.client.images.build(path=str(template), tag=tag, rm=True)
        except Exception as exc:
            if isinstance(exc, WorkspaceError):
                raise
            raise InvalidWorkspace(f"workspace {id!r}: image build failed ({type(exc).__name__})") from None
        return tag

    def _create(self, id: str, tag: str, env: dict[str, str], configs: Path, template: Path,
                restarts: int = 0) -> Any:
        volumes = {str(configs): {"bind": "/configs", "mode": "rw"}}
        if SHIM.is_file():
            volumes[str(SHIM)] = {"bind": SHIM_PATH, "mode": "ro"}
        return self.client.containers.create(
            tag, name=f"secretsd-{id}", hostname=hostname_for(id), environment=env, volumes=volumes,
            labels={LABEL: id, "io.secretsd.configs": str(configs), "io.secretsd.restarts": str(restarts),
                    "io.secretsd.template": str(template)},
            detach=True,
        )


def _env_of(container: Any) -> dict[str, str]:
    """The container's create-time env minus what the image added."""
    image_env = set(container.image.attrs.get("Config", {}).get("Env") or [])
    out = {}
    for entry in container.attrs.get("Config", {}).get("Env") or []:
        if entry in image_env:
            continue
        k, _, v = entry.partition("=")
        out[k] = v
    return out


def _ts(text: str | None) -> float | None:
    if not text or text.startswith("0001"):
        return None
    try:
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return None

