"""The entry chain: from a template's Dockerfile(s) to the scripts that run.

For each Dockerfile: ENTRYPOINT/CMD (exec or shell form, SHELL, WORKDIR)
give the argv; COPY/ADD map image paths back to repo files; then the
scripts that the entry script sources or execs are followed, and their
events (see :mod:`shell`) are spliced in execution order.
"""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass, field

from secretsd import dockerfile
from secretsd.dockerfile import Command, ImageSpec
from secretsd.templates import shell
from secretsd.templates.shell import Event, Script
from secretsd.templates.tree import Tree

IMAGE_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
INIT_WRAPPERS = {"tini", "tini-static", "dumb-init", "catatonit"}
SHIM_NAMES = {"with-secrets"}
MAX_DEPTH = 8


def find_dockerfiles(tree: Tree) -> list[str]:
    """Dockerfiles at the root or one folder down (``Dockerfile``,
    ``Dockerfile.*``, ``*.Dockerfile``)."""
    out = []
    for f in tree.files():
        if f.count("/") > 1:
            continue
        base = f.rsplit("/", 1)[-1]
        if base == "Dockerfile" or base.startswith("Dockerfile.") or base.lower().endswith(".dockerfile"):
            out.append(f)
    return sorted(out, key=lambda f: (f.count("/"), f != "Dockerfile", f))


@dataclass
class Flat:
    """An event with where it happened and how it reached the entry script."""

    ev: Event
    file: str
    dialect: str
    top: bool
    entry_stmt: int  # start line of the entry script's top-level statement
    resolved: str | None = None  # repo file for source/run events


@dataclass
class Entry:
    """What one Dockerfile starts, and what the audit learned about it."""

    dockerfile: str
    spec: ImageSpec | None
    kind: str  # script | program | wrapper | inline | unresolved
    instruction: str | None = None  # "ENTRYPOINT" or "CMD"
    command: Command | None = None
    argv: tuple[str, ...] = ()
    script: str | None = None  # repo path of the entry script
    image_path: str | None = None
    dialect: str = "sh"
    via_shell: bool = False  # started as `sh script` (shebang not used)
    relative: bool = False
    reason: str = ""
    chain: list[str] = field(default_factory=list)
    flat: list[Flat] = field(default_factory=list)
    scripts: dict[str, Script] = field(default_factory=dict)


class Resolver:
    """Image path -> repo file, from the Dockerfile's COPY/ADD."""

    def __init__(self, tree: Tree, spec: ImageSpec, dockerfile_path: str) -> None:
        self.tree = tree
        self.spec = spec
        ctx_dir = posixpath.dirname(dockerfile_path)
        self.contexts = [""] + ([ctx_dir] if ctx_dir else [])

    def repo_file(self, image_path: str) -> str | None:
        image_path = posixpath.normpath(image_path)
        for cp in reversed(self.spec.copies):  # the last COPY wins
            if cp.from_stage:
                continue
            dest = cp.dest
            for ctx in self.contexts:
                matches = self._expand(ctx, cp.sources)
                into_dir = dest.endswith("/") or len(matches) > 1
                for src in matches:
                    if self.tree.is_file(src):
                        cands = [posixpath.join(dest, posixpath.basename(src))]
                        if not into_dir:
                            cands.append(posixpath.normpath(dest))
                        if image_path in (posixpath.normpath(c) for c in cands):
                            return src
                    elif self.tree.is_dir(src):
                        # A folder's contents land in dest.
                        base = posixpath.normpath(dest)
                        if image_path.startswith(base.rstrip("/") + "/"):
                            rel = image_path[len(base.rstrip("/")) + 1:]
                            cand = posixpath.normpath(posixpath.join(src, rel)) if src not in ("", ".") else rel
                            if self.tree.is_file(cand):
                                return cand
        return None

    def _expand(self, ctx: str, sources: tuple[str, ...]) -> list[str]:
        out: list[str] = []
        for s in sources:
            if "://" in s:
                continue
            rel = posixpath.normpath(posixpath.join(ctx, s.lstrip("/"))) if s not in (".", "./") else (ctx or ".")
            if any(ch in rel for ch in "*?["):
                out.extend(f for f in self.tree.files() if fnmatch.fnmatchcase(f, rel))
            elif rel == "." or self.tree.is_file(rel) or self.tree.is_dir(rel):
                out.append("" if rel == "." else rel)
        return out

    def lookup(self, word: str, *, search_path: bool) -> tuple[str | None, str]:
        """(repo file, image path) for a command word or sourced path."""
        if "/" in word:
            img = word if word.startswith("/") else posixpath.join(self.spec.workdir, word)
            return self.repo_file(img), posixpath.normpath(img)
        if search_path:
            for d in IMAGE_PATH:
                img = posixpath.join(d, word)
                found = self.repo_file(img)
                if found:
                    return found, img
        img = posixpath.join(self.spec.workdir, word)
        return (self.repo_file(img) if not search_path else None), img


def analyse_dockerfile(tree: Tree, path: str, cache: dict[tuple[str, str], Script]) -> Entry:
    text = tree.text(path) or ""
    try:
        spec = dockerfile.parse(tree.root / path, text=text)
    except Exception as exc:  # dockerfile-parse raises assorted errors on junk
        return Entry(path, None, "unresolved", reason=f"cannot parse {path}: {exc}")
    cmd, instr = (spec.entrypoint, "ENTRYPOINT") if spec.entrypoint else (spec.cmd, "CMD")
    entry = Entry(path, spec, "unresolved", instruction=instr if cmd else None, command=cmd)
    entry.argv = spec.start_argv()
    if not entry.argv:
        entry.reason = "no ENTRYPOINT or CMD: the base image's entrypoint is used"
        return entry
    entry.chain.append(f"{path}:{cmd.line if cmd else 0} {instr}")
    res = Resolver(tree, spec, path)
    argv = list(entry.argv)
    # Skip init wrappers and env: they pass the environment through.
    while argv:
        base = argv[0].rsplit("/", 1)[-1]
        if base in INIT_WRAPPERS:
            argv = argv[1:]
            while argv and argv[0].startswith("-"):
                stop = argv[0] == "--"
                argv = argv[1:]
                if stop:
                    break
        elif base == "env":
            argv = argv[1:]
            while argv and ("=" in argv[0] or argv[0].startswith("-")):
                argv = argv[1:]
        else:
            break
    if not argv:
        entry.reason = "the entrypoint only names an init wrapper"
        return entry
    base = argv[0].rsplit("/", 1)[-1]
    if base in SHIM_NAMES or (base == "secretsd" and len(argv) > 1 and argv[1] == "exec"):
        entry.kind = "wrapper"
        entry.chain.append(f"{argv[0]} (loads secrets, then execs)")
        return entry
    dialect = shell.SHELLS.get(base)
    if dialect:
        rest = argv[1:]
        while rest and rest[0].startswith("-") and rest[0] != "-c":
            rest = rest[1:]
        if rest and rest[0] == "-c":
            if len(rest) < 2:
                entry.reason = f"`{' '.join(argv)}` has no command string"
                return entry
            entry.kind = "inline"
            name = f"{path}:{cmd.line if cmd else 0}"
            script = shell.analyze(rest[1], "", dialect=dialect, known_env=frozenset(spec.env))
            entry.scripts[name] = script
            entry.dialect = dialect
            entry.flat = _flatten(tree, res, script, name, dialect, True, None, 0, set(), entry,
                                  cache, treat_final_as_exec=True)
            return entry
        if not rest:
            entry.reason = f"`{' '.join(argv)}` starts an interactive shell"
            entry.kind = "program"
            return entry
        word, entry.via_shell = rest[0], True
    else:
        word = argv[0]
    found, img = res.lookup(word, search_path="/" not in word)
    entry.image_path = img
    entry.relative = "/" in word and not word.startswith("/")
    if found is None:
        if word.endswith(".sh") or "/" in word and not any(img.startswith(d + "/") for d in IMAGE_PATH):
            entry.reason = f"`{word}` (image path {img}) is not copied from the repository"
        else:
            entry.kind = "program"
            entry.reason = f"`{word}` is a program, not a script"
        return entry
    text = tree.text(found) or ""
    if not entry.via_shell and not shell.is_shell_text(text):
        entry.kind = "program"
        entry.script = found
        entry.reason = f"`{word}` ({found}) is not a shell script"
        return entry
    entry.kind, entry.script = "script", found
    script = _load(tree, found, dialect if entry.via_shell else None, spec, cache, img)
    entry.dialect = script.dialect
    entry.scripts[found] = script
    entry.chain.append(found)
    entry.flat = _flatten(tree, res, script, found, script.dialect, True, None, 0, {found}, entry, cache)
    return entry


def _load(tree: Tree, rel: str, dialect: str | None, spec: ImageSpec,
          cache: dict[tuple[str, str], Script], image_path: str = "") -> Script:
    key = (rel, dialect or "")
    if key not in cache:
        cache[key] = shell.analyze(tree.text(rel) or "", image_path, dialect=dialect,
                                   known_env=frozenset(spec.env))
    return cache[key]


def _flatten(tree: Tree, res: Resolver, script: Script, file: str, dialect: str, top: bool,
             entry_stmt: int | None, depth: int, seen: set[str], entry: Entry,
             cache: dict[tuple[str, str], Script], *, treat_final_as_exec: bool = False,
             barriers_only: bool = False) -> list[Flat]:
    out: list[Flat] = []
    for ev in script.events:
        t = top and ev.top_level
        stmt = entry_stmt if entry_stmt is not None else ev.stmt_start
        if barriers_only and ev.kind not in ("env", "exec", "privdrop"):
            continue
        fl = Flat(ev, file, dialect, t, stmt)
        out.append(fl)
        if ev.kind not in ("source", "run") or not ev.target or depth >= MAX_DEPTH:
            continue
        found, img = res.lookup(ev.target, search_path=ev.kind == "source" and "/" not in ev.target)
        if found is None or found in seen:
            continue
        text = tree.text(found) or ""
        if ev.kind == "run" and not shell.is_shell_text(text):
            continue
        fl.resolved = found
        child = _load(tree, found, dialect if ev.kind == "source" else None, res.spec, cache, img)
        entry.scripts.setdefault(found, child)
        if found not in entry.chain:
            entry.chain.append(found)
        if ev.kind == "source":
            out.extend(_flatten(tree, res, child, found, dialect, t, stmt, depth + 1, seen | {found},
                                entry, cache, barriers_only=barriers_only))
        elif ev.is_exec or (ev.final and (treat_final_as_exec or t)):
            # The run script takes over (exec, or the last thing started).
            out.extend(_flatten(tree, res, child, found, child.dialect, t, stmt, depth + 1,
                                seen | {found}, entry, cache, barriers_only=barriers_only))
        else:
            # A child process: what it reads before our guard still matters.
            out.extend(_flatten(tree, res, child, found, child.dialect, False, stmt, depth + 1,
                                seen | {found}, entry, cache, barriers_only=True))
    return out
