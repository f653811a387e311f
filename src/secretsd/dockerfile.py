"""What a template's Dockerfile says about the image: files, entrypoint, env.

Parsed with dockerfile-parse (a real parser, not regular expressions). Only
the final stage matters for how a container starts. Used by the template
audit (which needs line numbers) and by the local sandbox runtime (which
lays the files out at their image paths).
"""

from __future__ import annotations

import io
import json
import posixpath
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser


@dataclass(frozen=True)
class Copy:
    """One ``COPY``/``ADD``: repo-relative sources to an image path."""

    sources: tuple[str, ...]
    dest: str  # absolute image path (resolved against WORKDIR)
    chmod: str | None
    chown: str | None
    line: int  # 1-based
    from_stage: str | None = None  # COPY --from=... (not from the repo)

    def targets(self) -> list[tuple[str, str]]:
        """(source, image path) pairs. A dest ending in ``/`` or several
        sources means "into this folder", as Docker does."""
        into_dir = self.dest.endswith("/") or len(self.sources) > 1
        out = []
        for src in self.sources:
            if into_dir:
                out.append((src, posixpath.join(self.dest, posixpath.basename(src.rstrip("/")))))
            else:
                out.append((src, self.dest))
        return out


@dataclass(frozen=True)
class Command:
    """``ENTRYPOINT`` or ``CMD``: exec form (a list) or shell form (a string)."""

    argv: tuple[str, ...]
    exec_form: bool
    raw: str
    line: int
    end_line: int = 0  # last line of the instruction (continuations); 0 = same as line

    def resolved_argv(self, shell: tuple[str, ...]) -> tuple[str, ...]:
        """The argv Docker runs: shell form goes through ``SHELL``."""
        return self.argv if self.exec_form else (*shell, self.raw)


@dataclass(frozen=True)
class Run:
    """One ``RUN`` in shell form (its text) or exec form (argv)."""

    text: str
    line: int  # 1-based


@dataclass
class ImageSpec:
    path: Path
    base_image: str | None = None
    workdir: str = "/"
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    shell: tuple[str, ...] = ("/bin/sh", "-c")
    copies: list[Copy] = field(default_factory=list)
    entrypoint: Command | None = None
    cmd: Command | None = None
    runs: list[Run] = field(default_factory=list)  # final stage, in order

    def start_argv(self) -> tuple[str, ...]:
        """ENTRYPOINT + CMD combined as Docker does. Empty when neither is set."""
        ep = self.entrypoint.resolved_argv(self.shell) if self.entrypoint else ()
        if self.entrypoint and not self.entrypoint.exec_form:
            return ep  # shell-form ENTRYPOINT ignores CMD
        cmd = self.cmd.resolved_argv(self.shell) if self.cmd else ()
        return (*ep, *cmd)

    def image_to_repo(self) -> dict[str, str]:
        """Image path -> repo-relative source, for files copied from the repo."""
        out: dict[str, str] = {}
        for cp in self.copies:
            if cp.from_stage:
                continue
            for src, dest in cp.targets():
                out[dest] = src
        return out


def _parse_command(value: str, line: int, end_line: int = 0) -> Command:
    text = value.strip()
    if text.startswith("["):
        try:
            argv = json.loads(text)
            if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
                return Command(tuple(argv), True, text, line, end_line or line)
        except json.JSONDecodeError:
            pass  # Docker treats malformed JSON as shell form, so do we.
    return Command(tuple(_split(text)), False, text, line, end_line or line)


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def parse(path: str | Path, *, text: str | None = None) -> ImageSpec:
    """Parse a Dockerfile; the final stage's settings win, as in a build."""
    path = Path(path)
    if text is None:
        text = path.read_text(encoding="utf-8", errors="replace")
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    spec = ImageSpec(path=path)
    for item in parser.structure:
        ins = item["instruction"].upper()
        value = item["value"]
        line = item["startline"] + 1
        end_line = item["endline"] + 1
        if ins == "FROM":
            # A new stage starts afresh: only the last one is the image.
            spec = ImageSpec(path=path, base_image=value.split()[0] if value else None)
        elif ins == "WORKDIR":
            spec.workdir = posixpath.normpath(posixpath.join(spec.workdir, value.strip()))
        elif ins == "USER":
            spec.user = value.strip() or None
        elif ins == "ENV":
            spec.env.update(_parse_env(value))
        elif ins == "SHELL":
            cmd = _parse_command(value, line)
            if cmd.exec_form and cmd.argv:
                spec.shell = cmd.argv
        elif ins in ("COPY", "ADD"):
            cp = _parse_copy(value, line, spec.workdir)
            if cp:
                spec.copies.append(cp)
        elif ins == "ENTRYPOINT":
            # Docker drops a CMD inherited from the base image here, but keeps
            # one set earlier in this stage (moby/buildkit `cmdSet`); an
            # inherited CMD is never in spec.cmd, so nothing to reset.
            spec.entrypoint = _parse_command(value, line, end_line)
        elif ins == "CMD":
            spec.cmd = _parse_command(value, line, end_line)
        elif ins == "RUN":
            spec.runs.append(Run(value.strip(), line))
    return spec


def _parse_copy(value: str, line: int, workdir: str) -> Copy | None:
    text = value.strip()
    flags: dict[str, str] = {}
    # Leading --flags (--chmod=, --chown=, --from=), then shell or JSON form.
    while text.startswith("--"):
        word, _, text = text.partition(" ")
        k, _, v = word[2:].partition("=")
        flags[k] = v
        text = text.lstrip()
    if text.startswith("["):
        try:
            words = json.loads(text)
        except json.JSONDecodeError:
            return None
    else:
        words = _split(text)
    if len(words) < 2 or not all(isinstance(w, str) for w in words):
        return None
    *sources, dest = words
    if not dest.startswith("/"):
        dest = posixpath.join(workdir, dest)
    return Copy(
        sources=tuple(sources),
        dest=dest,
        chmod=flags.get("chmod"),
        chown=flags.get("chown"),
        line=line,
        from_stage=flags.get("from"),
    )


def _parse_env(value: str) -> dict[str, str]:
    words = _split(value)
    if not words:
        return {}
    if "=" not in words[0]:
        # Legacy "ENV NAME value with spaces".
        name, _, rest = value.strip().partition(" ")
        return {name: rest.strip()}
    out = {}
    for w in words:
        k, _, v = w.partition("=")
        out[k] = v
    return out


