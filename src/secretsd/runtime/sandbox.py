"""The local sandbox runtime: each workspace is a bubblewrap process tree.

Per workspace, bwrap creates new PID, mount, UTS and IPC namespaces and
runs the template's ENTRYPOINT/CMD as PID 1 of the new PID namespace
(``--as-pid-1``, like a container without ``--init``). Its filesystem:

  /            the workspace's container layer (``rootfs/``): the template's
               COPY'd files, /etc/passwd and /etc/group (root, agent=1000),
               /root, /home/agent, /tmp — writable, kept by ``restart`` and
               ``start``, rebuilt by ``recreate`` (as a container's layer)
  /usr, /bin.. the host's, read-only: the stand-in for the base image
               (``FROM python:3.12-slim`` runs on the host's python3).
               Where the layer has files under /usr, the host's entries are
               bound one by one around them
  /etc/...     a few host files a base image also has (ld.so.cache,
               alternatives, ssl, resolv.conf...), read-only
  /configs     the host's ``configs_dir``, read-write (the only host folder)
  /usr/local/bin/with-secrets  secretsd's shim, read-only (if shipped)
  /proc, /dev  new, for the namespace

Supervision. The tree dies with the workspace because it lives in its own
PID namespace: when that namespace's PID 1 exits or is killed, the kernel
SIGKILLs every other process in it, and nothing can leave a PID namespace
(setsid/double-fork included). Stopping = SIGTERM to PID 1 through a pidfd,
SIGKILL after a grace period. bwrap runs in its own session and is not tied
to the control plane (no ``--die-with-parent``: that kills the workspace
with the control plane, and only the parts of the tree that kept their
credentials): workspaces outlive a control-plane restart, and a new
control-plane process finds them through ``state.json`` (pids plus kernel
start times, so a recycled pid is never mistaken for a workspace).

Privileges. The tree runs as real root with the capabilities a Docker
container keeps (minus MKNOD, NET_RAW), no_new_privs (so setuid programs
such as sudo do not work; gosu does), host network (no network namespace).

Environment. Built fresh, never inherited from the control plane: PATH and
HOSTNAME defaults, the image's ENV (base first), the create-time snapshot,
HOME for the image's USER if unset. It is passed to bwrap through exec's
environment (never argv) and stored 0600 in ``env`` so ``restart`` and
``start`` reuse it, as an engine keeps a container's config.

On-disk state, per workspace under ``DATA/runtime/sandbox/<id>/`` (0700):
spec.json (create-time spec), state.json, env, status.jsonl (bwrap's
``--json-status-fd``: child pid, exit code), console.log (stdout+stderr),
rootfs/.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import secretsd
from secretsd.runtime import image as img
from secretsd.runtime import procfs
from secretsd.runtime.base import (
    InvalidWorkspace,
    MainProcessUnavailable,
    RestartMode,
    RuntimeUnavailable,
    WorkspaceExists,
    WorkspaceNotFound,
    WorkspaceSpec,
    WorkspaceStartFailed,
    WorkspaceStatus,
    check_id,
    hostname_for,
)

BWRAP = "/usr/bin/bwrap"
GOSU = "/usr/sbin/gosu"
SHIM = Path(secretsd.__file__).parent / "format" / "sh" / "with-secrets"
SHIM_PATH = "/usr/local/bin/with-secrets"

#: Docker's default capability set, minus MKNOD and NET_RAW (no device
#: cgroup or network namespace here to contain them).
CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
)

#: Host /etc entries a Debian base image has too (read-only in the sandbox).
HOST_ETC = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "resolv.conf",
    "nsswitch.conf", "host.conf", "gai.conf", "services", "protocols", "ssl", "ca-certificates",
    "ca-certificates.conf", "mime.types", "bash.bashrc", "profile", "inputrc",
)


class SandboxRuntime:
    name = "sandbox"

    def __init__(
        self,
        data_dir: str | Path,
        *,
        images: Mapping[str, str | Path] | None = None,
        stop_timeout: float = 5.0,
        start_timeout: float = 10.0,
        shim: Path | None = SHIM,
    ) -> None:
        """``images``: local base images by name (``FROM name[:tag]``) ->
        folder with their Dockerfile."""
        self.root = Path(data_dir) / "runtime" / "sandbox"
        self.images = {k: Path(v) for k, v in (images or {}).items()}
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.shim = shim

    # -- availability -------------------------------------------------------

    @staticmethod
    def check() -> None:
        """Raise RuntimeUnavailable when this host cannot run sandboxes."""
        if not os.access(BWRAP, os.X_OK):
            raise RuntimeUnavailable("sandbox", f"{BWRAP} not found (Debian package bubblewrap)")
        if not os.access(GOSU, os.X_OK):
            raise RuntimeUnavailable("sandbox", f"{GOSU} not found (Debian package gosu)")
        if os.geteuid() != 0:
            raise RuntimeUnavailable("sandbox", "must run as root (bwrap sets up mounts, gosu drops to uid 1000)")

    # -- the Runtime interface ----------------------------------------------

    def provision(self, spec: WorkspaceSpec) -> None:
        self.check()
        check_id(spec.id)
        if spec.template is None:
            raise InvalidWorkspace(f"workspace {spec.id!r}: the sandbox runtime needs a template")
        _check_env(spec.env)
        image = img.resolve(spec.template, self.images)  # fail before creating anything
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(spec.id):
            wdir = self._dir(spec.id)
            if (wdir / "spec.json").exists():
                raise WorkspaceExists(spec.id)
            if wdir.exists():
                shutil.rmtree(wdir)  # debris of a provision that failed half-way
            wdir.mkdir(mode=0o700)
            try:
                configs = Path(spec.configs_dir).resolve()
                configs.mkdir(parents=True, exist_ok=True)  # as an engine does for a bind source
                _write_json(wdir / "spec.json", {
                    "id": spec.id, "template": str(Path(spec.template).resolve()), "env": spec.env,
                    "configs_dir": str(configs), "created_at": time.time(),
                })
                st: dict[str, Any] = {"restarts": 0}
                self._recreate_layer(spec.id, image, st)
                env = self._build_env(spec.id, image, spec.env)
                self._launch(spec.id, st, env, "provision")
            except BaseException:
                # A failed provision leaves nothing behind: the caller undoes the
                # creation, and a retry must not find a half-made workspace.
                if (wdir / "state.json").exists():
                    self._kill(spec.id, self._state(spec.id))
                shutil.rmtree(wdir, ignore_errors=True)
                raise

    def start(self, id: str) -> None:
        with self._lock(id):
            st = self._state(id)
            if self._running(id, st):
                return
            self._launch(id, st, self._stored_env(id), "start")

    def stop(self, id: str) -> None:
        with self._lock(id):
            st = self._state(id)
            self._kill(id, st)
            st["desired"] = "stopped"
            self._save_state(id, st)

    def restart(self, id: str, mode: RestartMode) -> None:
        if mode not in ("recreate", "restart"):
            raise InvalidWorkspace(f"restart mode must be recreate or restart, not {mode!r}")
        with self._lock(id):
            st = self._state(id)
            self._kill(id, st)
            st["restarts"] = int(st.get("restarts", 0)) + 1
            if mode == "recreate":
                spec = self._spec(id)
                image = img.resolve(spec["template"], self.images)
                self._recreate_layer(id, image, st)
                env = self._build_env(id, image, spec["env"])
            else:
                env = self._stored_env(id)
            self._launch(id, st, env, mode)

    def status(self, id: str) -> WorkspaceStatus:
        try:
            check_id(id)
            st = self._state(id)
        except (WorkspaceNotFound, InvalidWorkspace):
            return WorkspaceStatus(id=id, state="absent")
        if self._running(id, st):
            state = "running"
        else:
            state = "stopped" if st.get("desired") == "stopped" else "exited"
        return WorkspaceStatus(
            id=id,
            state=state,  # type: ignore[arg-type]
            pid=st.get("pid"),
            started_at=st.get("started_at"),
            restarts=int(st.get("restarts", 0)),
            exit_code=None if state == "running" else self._exit_code(id),
        )

    def remove(self, id: str) -> None:
        with self._lock(id):
            st = self._state(id)
            self._kill(id, st)
            shutil.rmtree(self._dir(id))
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{id}.lock").unlink()

    def main_environ(self, id: str, settle: float = 5.0) -> dict[str, bytes]:
        pid = self.main_pid(id, settle)
        try:
            return procfs.environ(pid)
        except PermissionError:
            raise MainProcessUnavailable(f"workspace {id!r}: reading a process environment needs host root") from None
        except OSError:
            raise MainProcessUnavailable(f"workspace {id!r}: its main process is gone") from None

    # -- extras used by the CLI, tests and phase-2 callers --------------------

    def main_pid(self, id: str, settle: float = 5.0) -> int:
        """Host pid of the main process (see procfs), waiting up to ``settle``
        seconds for the entrypoint chain to finish its execs."""
        st = self._state(id)
        if not self._running(id, st):
            raise MainProcessUnavailable(f"workspace {id!r} is not running")
        return procfs.settle_main(int(st["pid"]), settle)

    def log_path(self, id: str) -> Path:
        return self._dir(check_id(id)) / "console.log"

    def rootfs(self, id: str) -> Path:
        """Host path of the workspace's writable layer (its ``/``)."""
        return self._dir(check_id(id)) / "rootfs"

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "spec.json").is_file())

    # -- internals ------------------------------------------------------------

    def _dir(self, id: str) -> Path:
        return self.root / id

    @contextlib.contextmanager
    def _lock(self, id: str) -> Iterator[None]:
        """One operation per workspace at a time, across processes too."""
        check_id(id)
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _spec(self, id: str) -> dict[str, Any]:
        try:
            return json.loads((self._dir(check_id(id)) / "spec.json").read_text())
        except FileNotFoundError:
            raise WorkspaceNotFound(id) from None

    def _state(self, id: str) -> dict[str, Any]:
        wdir = self._dir(check_id(id))
        if not (wdir / "spec.json").is_file():
            raise WorkspaceNotFound(id)
        try:
            return json.loads((wdir / "state.json").read_text())
        except FileNotFoundError:
            return {"restarts": 0}

    def _save_state(self, id: str, st: dict[str, Any]) -> None:
        _write_json(self._dir(id) / "state.json", st)

    def _running(self, id: str, st: dict[str, Any]) -> bool:
        return procfs.alive(st.get("pid"), st.get("pid_start"))

    def _recreate_layer(self, id: str, image: img.Image, st: dict[str, Any]) -> None:
        st["layer_paths"] = img.stage(self._dir(id) / "rootfs", image)
        st["workdir"] = image.workdir
        st["user"] = image.user
        st["argv"] = list(image.argv)

    def _build_env(self, id: str, image: img.Image, snapshot: Mapping[str, str]) -> dict[str, str]:
        uid, _, home = img.user_ids(image.user)
        env = {"PATH": img.DEFAULT_PATH, "HOSTNAME": hostname_for(id)}
        env.update(image.env)
        env.update(snapshot)
        env.setdefault("HOME", home)
        _check_env(env)
        return env

    def _stored_env(self, id: str) -> dict[str, str]:
        raw = (self._dir(id) / "env").read_bytes()
        env: dict[str, str] = {}
        for entry in raw.split(b"\0"):
            if entry:
                k, _, v = entry.partition(b"=")
                env[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        return env

    def _store_env(self, id: str, env: Mapping[str, str]) -> None:
        data = b"".join(
            k.encode("utf-8", "surrogateescape") + b"=" + v.encode("utf-8", "surrogateescape") + b"\0"
            for k, v in env.items()
        )
        path = self._dir(id) / "env"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def _bwrap_argv(self, id: str, st: dict[str, Any], status_fd: int) -> list[str]:
        wdir = self._dir(id)
        spec = self._spec(id)
        rootfs = wdir / "rootfs"
        extra: dict[str, Path] = {}
        if self.shim is not None and self.shim.is_file():
            extra[SHIM_PATH] = self.shim
        placed = set(st.get("layer_paths", []))
        protected = placed | set(extra)
        args = [
            BWRAP, "--unshare-pid", "--unshare-uts", "--unshare-ipc", "--unshare-cgroup-try",
            "--as-pid-1", "--new-session", "--hostname", hostname_for(id),
            "--json-status-fd", str(status_fd), "--cap-drop", "ALL",
        ]
        for cap in CAPS:
            args += ["--cap-add", cap]
        args += ["--bind", str(rootfs), "/"]
        for name in img.SYSTEM_DIRS:
            host = "/" + name
            if os.path.isdir(host) and not os.path.islink(host):
                args += _system_binds(host, protected, rootfs)
        for name in (*HOST_ETC, *_python_etc()):
            host = "/etc/" + name
            if os.path.exists(host) and not any(p == host or p.startswith(host + "/") for p in placed):
                args += ["--ro-bind", host, host]  # the template's own copy wins
        args += ["--proc", "/proc", "--dev", "/dev", "--bind", spec["configs_dir"], "/configs"]
        for dest, src in extra.items():
            args += ["--ro-bind", str(src), dest]
        _prepare_mount_points(rootfs, args)
        args += ["--chdir", st.get("workdir", "/")]
        argv = list(st["argv"])
        uid, gid, _ = img.user_ids(st.get("user", "root"))
        if uid != 0:
            argv = [GOSU, f"{uid}:{gid}", *argv]  # USER: bwrap cannot setuid without a user namespace
        return [*args, "--", *argv]

    def _launch(self, id: str, st: dict[str, Any], env: dict[str, str], reason: str) -> None:
        wdir = self._dir(id)
        # A wiped configs folder is re-created empty, as an engine does for a
        # bind source; the control plane materialises secrets.d before this.
        Path(self._spec(id)["configs_dir"]).mkdir(parents=True, exist_ok=True)
        self._store_env(id, env)
        status_path = wdir / "status.jsonl"
        sfd = os.open(status_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        log = open(wdir / "console.log", "ab")
        try:
            log.write(f"--- secretsd sandbox: {reason} {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ---\n".encode())
            log.flush()
            os.chmod(wdir / "console.log", 0o600)
            argv = self._bwrap_argv(id, st, sfd)
            try:
                proc = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    pass_fds=(sfd,), start_new_session=True, close_fds=True,
                )
            except OSError as exc:
                raise WorkspaceStartFailed(f"workspace {id!r}: cannot run bwrap: {exc.strerror}") from None
        finally:
            os.close(sfd)
            log.close()
        # Reap bwrap whenever it ends, so no zombie waits for a status call.
        threading.Thread(target=proc.wait, name=f"sandbox-reaper-{id}", daemon=True).start()
        pid = self._wait_child_pid(id, proc)
        st.update({
            "desired": "running", "pid": pid, "pid_start": procfs.start_time(pid),
            "bwrap_pid": proc.pid, "bwrap_start": procfs.start_time(proc.pid),
            "started_at": time.time(),
        })
        self._save_state(id, st)

    def _wait_child_pid(self, id: str, proc: subprocess.Popen[bytes]) -> int:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            info = _read_status(self._dir(id) / "status.jsonl")
            if "child-pid" in info:
                return int(info["child-pid"])
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise WorkspaceStartFailed(f"workspace {id!r} did not start: {self._bwrap_error(id)}")

    def _bwrap_error(self, id: str) -> str:
        # Only bwrap's own messages (paths, errnos): the entrypoint's output
        # could hold anything.
        try:
            lines = (self._dir(id) / "console.log").read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        errs = [ln for ln in lines[-20:] if ln.startswith("bwrap: ")]
        return errs[-1] if errs else f"see {self._dir(id) / 'console.log'}"

    def _kill(self, id: str, st: dict[str, Any]) -> None:
        pid, started = st.get("pid"), st.get("pid_start")
        if pid and started is not None:
            procfs.terminate(int(pid), int(started), self.stop_timeout)
        # bwrap (outside the namespace) exits once its child is gone; wait
        # for it so status.jsonl has the exit code.
        bpid, bstart = st.get("bwrap_pid"), st.get("bwrap_start")
        deadline = time.monotonic() + 5
        while bpid and procfs.alive(bpid, bstart) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _exit_code(self, id: str) -> int | None:
        code = _read_status(self._dir(id) / "status.jsonl").get("exit-code")
        return int(code) if code is not None else None


def _system_binds(host: str, protected: set[str], rootfs: Path) -> list[str]:
    """Read-only binds of a host folder, split around the layer's own paths:
    where the layer placed files under it, bind the host's entries one by one
    (recursively) and leave the layer's paths visible."""
    if not any(p == host or p.startswith(host + "/") for p in protected):
        return ["--ro-bind", host, host]
    if host in protected:
        return []
    layer = rootfs / host.lstrip("/")
    _mount_point(rootfs, host, is_dir=True)  # a real folder, never a planted symlink
    args: list[str] = []
    for entry in sorted(os.listdir(host)):
        path = f"{host}/{entry}"
        inner = any(p == path or p.startswith(path + "/") for p in protected)
        if os.path.islink(path):
            if not inner:
                _ensure_symlink(layer / entry, os.readlink(path))
        elif os.path.isdir(path) and inner:
            args += _system_binds(path, protected, rootfs)
        elif not inner:
            args += ["--ro-bind", path, path]
    return args


def _prepare_mount_points(rootfs: Path, args: list[str]) -> None:
    """Create every mount point in the layer as a real folder or file.

    The layer is the workspace's to write: as root inside it could have put
    a symlink where a mount point goes (``/usr/local -> /oldroot/etc``), and
    bwrap, root on the host, would then create mount points — or this code
    its folders — through it, on the host. So before each start (the tree
    is dead, nothing races us) every component is checked with lstat and
    whatever is not a real folder/file is replaced: it is the workspace's
    own layer it breaks, never the host."""
    i = 0
    while i < len(args):
        op = args[i]
        if op in ("--bind", "--ro-bind"):
            src, dest = args[i + 1], args[i + 2]
            i += 3
            if dest != "/":
                _mount_point(rootfs, dest, is_dir=os.path.isdir(src))
        elif op in ("--proc", "--dev"):
            _mount_point(rootfs, args[i + 1], is_dir=True)
            i += 2
        else:
            i += 1


def _mount_point(rootfs: Path, dest: str, is_dir: bool) -> None:
    parts = [p for p in dest.split("/") if p]
    cur = rootfs
    for n, part in enumerate(parts):
        cur = cur / part
        want_dir = is_dir or n < len(parts) - 1
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            st = None
        if st is not None and (stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)):
            continue
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(cur)
            else:
                cur.unlink()  # a symlink is removed, never followed
        if want_dir:
            os.mkdir(cur, 0o755)
        else:
            os.close(os.open(cur, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))


def _ensure_symlink(path: Path, target: str) -> None:
    # bwrap's --symlink fails when the link exists (the layer keeps it across
    # starts), so the layer gets real links.
    if path.is_symlink() and os.readlink(path) == target:
        return
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        return  # the workspace put a folder there: leave its layer alone
    os.symlink(target, path)


def _python_etc() -> list[str]:
    return sorted(n for n in os.listdir("/etc") if n.startswith("python3"))


def _check_env(env: Mapping[str, str]) -> None:
    for k, v in env.items():
        if not k or "=" in k or "\0" in k:
            raise InvalidWorkspace(f"environment name {k[:80]!r} is invalid")
        if "\0" in v:
            raise InvalidWorkspace(f"environment variable {k}: value contains a NUL byte")


def _read_status(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                out.update(obj)
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
