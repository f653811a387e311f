"""A template folder as an image: its Dockerfile, its local base images, and
the "container layer" the sandbox runs on.

The sandbox does not build images. It approximates one:
- the base image (``FROM python:3.12-slim`` ...) is the host's own ``/usr``,
  read-only, unless ``FROM`` names a *local image* (a folder with a
  Dockerfile, given to the runtime by name), whose files and settings are
  laid down first, recursively — the example templates build on
  ``secretsd-examples/agent-runtime`` (``examples/agent``);
- ``COPY``/``ADD`` of local files: placed at their image paths with their
  modes, ``--chmod`` and ``--chown`` applied (sources must stay inside the
  template folder); ``ADD`` URLs/archive extraction and ``COPY --from`` are
  refused or skipped;
- ``RUN`` is never executed. Only ``chmod`` commands in it are applied to
  files this layer placed (``RUN chmod +x /entrypoint.sh``; octal and
  symbolic modes, ``-R``; relative paths against the final WORKDIR),
  because templates store scripts non-executable and rely on that;
- ``useradd`` and package installs are replaced by what every sandbox has:
  users root and ``agent`` (uid/gid 1000), and gosu from the host.
"""

from __future__ import annotations

import glob
import os
import posixpath
import shlex
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from secretsd.dockerfile import Copy, ImageSpec, parse
from secretsd.runtime.base import InvalidWorkspace

AGENT_UID = 1000
AGENT_GID = 1000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Host top-level folders that make up the stand-in base image (read-only).
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")

PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "agent:x:1000:1000::/home/agent:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = "root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n"
USERS = {"root": (0, 0, "/root"), "agent": (AGENT_UID, AGENT_GID, "/home/agent"), "nobody": (65534, 65534, "/nonexistent")}
GROUPS = {"root": 0, "agent": AGENT_GID, "nogroup": 65534}


@dataclass
class Image:
    """A template resolved through its local base images (base first)."""

    layers: list[tuple[Path, ImageSpec]]  # (build context, parsed Dockerfile)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "root"
    argv: tuple[str, ...] = ()

    @property
    def template(self) -> Path:
        return self.layers[-1][0]


def resolve(template: str | Path, images: Mapping[str, Path] | None = None) -> Image:
    """Read a template folder's Dockerfile and its local bases."""
    images = dict(images or {})
    chain: list[tuple[Path, ImageSpec]] = []
    folder = Path(template)
    for _ in range(8):
        dockerfile = folder / "Dockerfile"
        if not dockerfile.is_file():
            raise InvalidWorkspace(f"template {str(folder)!r} has no Dockerfile")
        spec = parse(dockerfile)
        chain.append((folder.resolve(), spec))
        base = _local_base(spec.base_image, images)
        if base is None:
            break
        folder = base
    else:
        raise InvalidWorkspace(f"template {str(template)!r}: local base images nest too deep")
    chain.reverse()
    img = Image(layers=chain)
    ep = cmd = None
    for _, spec in chain:
        img.env.update(spec.env)
        if spec.workdir != "/":
            img.workdir = spec.workdir
        if spec.user:
            img.user = spec.user
        if spec.entrypoint is not None:
            ep, cmd = spec.entrypoint, spec.cmd  # a new ENTRYPOINT resets CMD
        elif spec.cmd is not None:
            cmd = spec.cmd
    merged = ImageSpec(path=chain[-1][1].path, shell=chain[-1][1].shell, entrypoint=ep, cmd=cmd)
    img.argv = merged.start_argv()
    if not img.argv:
        raise InvalidWorkspace(f"template {str(template)!r}: no ENTRYPOINT or CMD")
    return img


def _local_base(ref: str | None, images: Mapping[str, Path]) -> Path | None:
    if not ref:
        return None
    if ref in images:
        return Path(images[ref])
    name = ref.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return Path(images[name]) if name in images else None


def user_ids(user: str) -> tuple[int, int, str]:
    """uid, gid, home for a Dockerfile ``USER`` (names of the sandbox's passwd or numbers)."""
    name, _, group = user.partition(":")
    if name in USERS:
        uid, gid, home = USERS[name]
    elif name.isdigit():
        uid, gid, home = int(name), int(name), "/"
    else:
        raise InvalidWorkspace(f"USER {user!r}: the sandbox knows root, agent and numeric ids")
    if group:
        gid = GROUPS[group] if group in GROUPS else int(group) if group.isdigit() else -1
        if gid < 0:
            raise InvalidWorkspace(f"USER {user!r}: unknown group")
    return uid, gid, home


def host_path(image_path: str) -> str:
    """Follow the host's top-level symlinks (usr-merge: /bin -> usr/bin) so an
    image path lands where the sandbox will really see it."""
    # normpath keeps a leading "//" (POSIX allows it a meaning): strip first.
    path = posixpath.normpath("/" + image_path.lstrip("/"))
    parts = path.split("/")
    if len(parts) > 2 and parts[1] in SYSTEM_DIRS and os.path.islink("/" + parts[1]):
        target = os.readlink("/" + parts[1]).strip("/")
        return "/" + "/".join([target, *parts[2:]])
    return path


def stage(rootfs: Path, image: Image) -> list[str]:
    """Write a fresh container layer at ``rootfs``. Returns the image paths
    COPY placed (the sandbox must not mount the host's files over them)."""
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir(mode=0o755, parents=True)
    os.chmod(rootfs, 0o755)
    for d, mode, owner in (
        ("etc", 0o755, 0), ("root", 0o700, 0), ("home", 0o755, 0),
        ("home/agent", 0o755, AGENT_UID), ("tmp", 0o1777, 0), ("var/tmp", 0o1777, 0),
        ("run", 0o755, 0), ("configs", 0o755, 0), ("usr", 0o755, 0),
    ):
        p = rootfs / d
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, mode)
        os.chown(p, owner, owner)
    for name in SYSTEM_DIRS:
        if os.path.islink("/" + name):
            os.symlink(os.readlink("/" + name), rootfs / name)
    _write(rootfs / "etc/passwd", PASSWD)
    _write(rootfs / "etc/group", GROUP)
    _write(rootfs / "etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    placed: list[str] = []
    for context, spec in image.layers:
        mine: list[str] = []
        for cp in spec.copies:
            mine += _apply_copy(rootfs, context, spec, cp)
        _apply_run_chmods(rootfs, spec, mine)
        placed += mine
    wd = _safe_dest(rootfs, host_path(image.workdir))
    wd.mkdir(parents=True, exist_ok=True)
    return sorted(set(placed))


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o644)


def _safe_dest(rootfs: Path, image_path: str) -> Path:
    """The host path for an image path inside the layer, refusing to walk
    through symlinks a template may have placed (they could point at the host)."""
    parts = [p for p in posixpath.normpath(image_path).split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidWorkspace(f"image path {image_path!r} leaves the image")
    cur = rootfs
    for part in parts:
        cur = cur / part
        if cur.is_symlink():
            raise InvalidWorkspace(f"image path {image_path!r} goes through a symlink")
    return cur


def _apply_copy(rootfs: Path, context: Path, spec: ImageSpec, cp: Copy) -> list[str]:
    where = f"{spec.path.name}:{cp.line}"
    if cp.from_stage:
        return []  # other stages are not built; their files are the base's business
    uid, gid = _chown_ids(cp.chown, where)
    placed: list[str] = []
    for src, dest in _expand(context, cp, where):
        if "://" in src:
            raise InvalidWorkspace(f"{where}: ADD from a URL is not supported by the sandbox")
        full = (context / src).resolve()
        if full != context and not full.is_relative_to(context):
            raise InvalidWorkspace(f"{where}: COPY source {src!r} is outside the template folder")
        if not full.exists():
            raise InvalidWorkspace(f"{where}: COPY source {src!r} not found")
        if full.is_dir():
            dest = cp.dest  # Docker copies a folder's contents, never the folder itself
        image_path = host_path(dest)
        target = _safe_dest(rootfs, image_path)
        if full.is_file() and target.is_dir():
            image_path = posixpath.join(image_path, full.name)
            target = target / full.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if full.is_dir():
            shutil.copytree(full, target, symlinks=True, dirs_exist_ok=True)
            paths = [target, *target.rglob("*")]
        else:
            if target.is_symlink() or target.exists():
                target.unlink()
            shutil.copy2(full, target, follow_symlinks=True)
            paths = [target]
        for p in paths:
            if cp.chmod and not p.is_symlink():
                os.chmod(p, int(cp.chmod, 8))
            os.lchown(p, uid, gid)
        placed.append(image_path)
    return placed


def _expand(context: Path, cp: Copy, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for src, dest in cp.targets():
        if any(c in src for c in "*?["):
            matches = sorted(glob.glob(src, root_dir=context))
            if not matches:
                raise InvalidWorkspace(f"{where}: COPY source {src!r} matches nothing")
            out += [(m, posixpath.join(cp.dest, posixpath.basename(m))) for m in matches]
        else:
            out.append((src, dest))
    return out


def _chown_ids(chown: str | None, where: str) -> tuple[int, int]:
    if not chown:
        return 0, 0
    user, _, group = chown.partition(":")
    try:
        uid, gid, _ = user_ids(user)
    except InvalidWorkspace:
        raise InvalidWorkspace(f"{where}: --chown={chown}: unknown user") from None
    if group:
        gid = GROUPS.get(group, int(group) if group.isdigit() else -1)
        if gid < 0:
            raise InvalidWorkspace(f"{where}: --chown={chown}: unknown group")
    return uid, gid


_SEPARATORS = {"&&", "||", ";", "|", "&"}


def _apply_run_chmods(rootfs: Path, spec: ImageSpec, placed: list[str]) -> None:
    """Apply ``chmod`` commands of RUN lines to files this layer placed."""
    for run in spec.runs:
        try:
            words = shlex.split(run.text.replace("\\\n", " "), posix=True)
        except ValueError:
            continue
        cmd: list[str] = []
        for w in [*words, ";"]:
            if w in _SEPARATORS or w.endswith(";"):
                if w.endswith(";") and w != ";":
                    cmd.append(w[:-1])
                if cmd and cmd[0] == "chmod":
                    _chmod(rootfs, spec.workdir, cmd[1:], placed)
                cmd = []
            else:
                cmd.append(w)


def _chmod(rootfs: Path, workdir: str, args: list[str], placed: list[str]) -> None:
    recursive = any(a in ("-R", "--recursive") for a in args)
    rest = [a for a in args if not a.startswith("-") or _is_mode(a)]
    if len(rest) < 2:
        return
    mode, paths = rest[0], rest[1:]
    for p in paths:
        image_path = host_path(posixpath.join(workdir, p))
        if not any(image_path == q or image_path.startswith(q + "/") for q in placed):
            continue  # not ours: the host's /usr is read-only anyway
        target = _safe_dest(rootfs, image_path)
        if not target.exists():
            continue
        targets = [target, *target.rglob("*")] if recursive and target.is_dir() else [target]
        for t in targets:
            if not t.is_symlink():
                os.chmod(t, _new_mode(mode, stat.S_IMODE(t.stat().st_mode), t.is_dir()))


def _is_mode(word: str) -> bool:
    return word[:1] in "-+=" and len(word) > 1 and all(c in "rwxXst" for c in word[1:])


def _new_mode(spec: str, cur: int, is_dir: bool) -> int:
    if spec.isdigit():
        return int(spec, 8)
    mode = cur
    for clause in spec.split(","):
        who = ""
        while clause and clause[0] in "ugoa":
            who, clause = who + clause[0], clause[1:]
        if not clause or clause[0] not in "+-=":
            return cur  # unknown syntax: leave the mode alone
        op, perms = clause[0], clause[1:]
        mask = 0
        for w in who or "a":
            shift = {"u": [6], "g": [3], "o": [0], "a": [6, 3, 0]}[w]
            for s in shift:
                for c in perms:
                    if c == "r":
                        mask |= 4 << s
                    elif c == "w":
                        mask |= 2 << s
                    elif c == "x" or (c == "X" and (is_dir or cur & 0o111)):
                        mask |= 1 << s
        if op == "+":
            mode |= mask
        elif op == "-":
            mode &= ~mask
        else:
            mode = mask
    return mode
