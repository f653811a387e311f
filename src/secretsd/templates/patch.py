"""Add the guard where it belongs, with the smallest possible change.

Scripts: the canonical block goes after the shebang and the leading comment
block (sh) or after a top-level ``set -e...`` (bash), and always before the
first exec, privilege drop or environment read; a top-level guard that is
too late (or malformed) is moved. Program entrypoints: the ``with-secrets``
shim is added and ``ENTRYPOINT`` wraps the program. Line endings, mode,
shebang and final newline are kept; nothing else is touched.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from secretsd.templates.audit import TemplateResult, audit_tree, barrier_kind, entry_script, verdict
from secretsd.templates.chain import Entry
from secretsd.templates.findings import Finding, Severity
from secretsd.templates.shell import GUARD_PATH
from secretsd.templates.tree import Tree

GUARD_LINE = f"if [ -f {GUARD_PATH} ]; then . {GUARD_PATH}; fi"
# One comment line: says why, and tells shellcheck not to follow the loader
# (which only exists at run time) so patching adds no SC1091.
COMMENT_LINE = "# shellcheck source=/dev/null # secretsd: load pushed secrets before anything uses them"
BLOCK = (COMMENT_LINE, GUARD_LINE)

SHIM_IMAGE_PATH = "/usr/local/bin/with-secrets"
SHIM_REPO_PATH = "with-secrets"
_FALLBACK_SHIM = f"""#!/bin/sh
# with-secrets: load pushed secrets (secretsd), then exec the given program.
{COMMENT_LINE}
{GUARD_LINE}
exec "$@"
"""


def shim_text() -> str:
    """The package's with-secrets shim when shipped, else an equivalent."""
    try:
        res = resources.files("secretsd.format").joinpath("sh/with-secrets")
        if res.is_file():
            return res.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        pass
    return _FALLBACK_SHIM


@dataclass
class Change:
    path: str
    old: bytes | None  # None: a new file
    new: bytes
    mode: int | None = None  # for new files


@dataclass
class PatchPlan:
    root: Path
    before: TemplateResult
    after: TemplateResult
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> list[Finding]:
        return [f for f in self.after.findings if f.severity is Severity.ERROR]


def plan(root: str | Path) -> PatchPlan:
    root = Path(root)
    tree = Tree(root)
    before = audit_tree(tree)
    overlay: dict[str, bytes] = {}
    notes: list[str] = []
    for entry in before.entries:
        if verdict(entry).good is not None or entry.kind == "wrapper":
            continue
        if not any(f.file in (entry.dockerfile, *entry.scripts) and f.code in _FIXABLE
                   for f in before.findings):
            continue
        target = entry_script(entry)
        if target in overlay:
            continue  # several Dockerfiles start the same script: patched once
        if entry.kind in ("script", "inline") and target:
            if entry.scripts[target].has_error or b"\0" in (tree.read(target) or b""):
                # Never guess where a statement starts in code we cannot parse.
                note = f"{target}: not patched: the shell parser finds a syntax error (check it with `sh -n`)"
                if note not in notes:
                    notes.append(note)
                continue
            _patch_script(tree, overlay, entry, target, notes)
        elif entry.kind in ("program", "inline"):
            _wrap_program(tree, overlay, entry, notes)
        else:
            notes.append(f"{entry.dockerfile}: cannot patch ({entry.reason})")
    after = audit_tree(Tree(root, overlay)) if overlay else before
    changes = [Change(p, tree.read(p), data, None if tree.read(p) is not None else 0o755)
               for p, data in overlay.items() if tree.read(p) != data]
    return PatchPlan(root, before, after, changes, notes)


_FIXABLE = {"MISSING", "COMMENT_ONLY", "AFTER_EXEC", "AFTER_PRIVDROP", "AFTER_ENV_USE",
            "NOT_TOP_LEVEL", "SOURCE_IN_SH", "RELATIVE_PATH", "UNGUARDED", "NO_SCRIPT"}


def _patch_script(tree: Tree, overlay: dict[str, bytes], entry: Entry, rel: str, notes: list[str]) -> None:
    raw = (overlay.get(rel) or tree.read(rel) or b"").decode("utf-8", errors="surrogateescape")
    script = entry.scripts[rel]
    lines = raw.split("\n")  # CRLF lines keep their "\r"
    crlf = script.crlf
    # Guards in this file that are whole top-level statements: moved.
    remove: set[int] = set()
    for fl in entry.flat:
        ev = fl.ev
        if fl.file == rel and ev.kind == "guard" and ev.pure and ev.top_level:
            end = next((e for s, e in script.statements if s == ev.stmt_start), ev.line)
            span = set(range(ev.stmt_start, end + 1))
            k = ev.stmt_start - 1  # attached comments that belong to it
            while k >= 1 and k > script.header_end and _is_comment(lines[k - 1]) and (
                _about_guard(lines[k - 1])
            ):
                span.add(k)
                k -= 1
            remove |= span
    first = next((fl for fl in entry.flat if barrier_kind(fl)), None)
    limit = None  # the guard must go above this line of rel
    if first is not None and first.file == rel:
        limit = first.ev.stmt_start
    elif first is not None and rel == entry.script:
        limit = first.entry_stmt  # reached through a script rel sources
    after = script.header_end
    if script.dialect == "bash" and script.set_e_end is not None:
        after = max(after, script.set_e_end)
    if limit is not None and after >= limit:
        after = max(0, limit - 1)
        # Comment lines right above the barrier describe it: stay above them.
        while after > script.header_end and _is_comment(lines[after - 1]) and (after not in remove):
            after -= 1
    r = "\r" if crlf else ""
    final_nl = raw.endswith("\n")
    body = lines[:-1] if final_nl else lines
    kept: list[tuple[int, str]] = []
    for i, line in enumerate(body, 1):
        if i in remove:
            continue
        # Where a moved block sat between blank lines, keep only one blank.
        if (not line.strip() and kept and not kept[-1][1].strip() and i - 1 in remove):
            continue
        kept.append((i, line))
    at = sum(1 for i, _ in kept if i <= after)  # insert before kept[at]
    prev = kept[at - 1][1] if at > 0 else None
    nxt = kept[at][1] if at < len(kept) else None
    block = [line + r for line in BLOCK]
    if prev is not None and prev.strip():
        block.insert(0, r)
    if nxt is not None and nxt.strip():
        block.append(r)
    out = [line for _, line in kept[:at]] + block + [line for _, line in kept[at:]]
    new = "\n".join(out) + ("\n" if final_nl else "")
    overlay[rel] = new.encode("utf-8", errors="surrogateescape")
    notes.append(f"{rel}: guard {'moved' if remove else 'added'} after line {after}")


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#") and not line.startswith("#!")


def _about_guard(line: str) -> bool:
    low = line.lower()
    return "secret" in low or "shellcheck" in low or "load.sh" in low


def _wrap_program(tree: Tree, overlay: dict[str, bytes], entry: Entry, notes: list[str]) -> None:
    df = entry.dockerfile
    cmd = entry.command
    if cmd is None or entry.spec is None:
        notes.append(f"{df}: cannot patch (no ENTRYPOINT or CMD)")
        return
    raw = (overlay.get(df) or tree.read(df) or b"").decode("utf-8", errors="surrogateescape")
    lines = raw.split("\n")
    eol = "\r" if lines and lines[0].endswith("\r") else ""
    idx = cmd.line - 1
    head = lines[idx]
    if entry.instruction == "ENTRYPOINT" and cmd.exec_form:
        pos = head.index("[") + 1
        lines[idx] = head[:pos] + json.dumps(SHIM_IMAGE_PATH) + ", " + head[pos:].lstrip(" ")
        if lines[idx][pos:].startswith(json.dumps(SHIM_IMAGE_PATH) + ", ]"):
            lines[idx] = lines[idx].replace(", ]", "]", 1)
    elif entry.instruction == "ENTRYPOINT":
        argv = [SHIM_IMAGE_PATH, *entry.spec.shell, cmd.raw]
        keyword = head.lstrip().split(None, 1)[0]
        lines[idx:cmd.end_line] = [f"{keyword} {json.dumps(argv)}{eol}"]
    else:  # CMD only: an ENTRYPOINT that wraps whatever CMD is
        lines.insert(idx, f"ENTRYPOINT {json.dumps([SHIM_IMAGE_PATH])}{eol}")
    if tree.read(SHIM_REPO_PATH) is None and SHIM_REPO_PATH not in overlay:
        overlay[SHIM_REPO_PATH] = shim_text().encode()
    copy_line = f"COPY {SHIM_REPO_PATH} {SHIM_IMAGE_PATH}{eol}"
    if copy_line.rstrip("\r") not in (ln.rstrip("\r") for ln in lines):
        lines.insert(idx, copy_line)
    overlay[df] = "\n".join(lines).encode("utf-8", errors="surrogateescape")
    notes.append(f"{df}: {entry.instruction} wrapped with {SHIM_IMAGE_PATH}")


# -- output ----------------------------------------------------------------

def unified_diff(changes: list[Change]) -> str:
    """A git-style diff (``git apply`` takes it)."""
    out: list[str] = []
    for ch in changes:
        new_lines = ch.new.decode("utf-8", errors="surrogateescape").splitlines(keepends=True)
        if ch.old is None:
            out.append(f"diff --git a/{ch.path} b/{ch.path}\n")
            out.append(f"new file mode 100{(ch.mode or 0o644):o}\n")
            old_lines: list[str] = []
            a = "/dev/null"
        else:
            out.append(f"diff --git a/{ch.path} b/{ch.path}\n")
            old_lines = ch.old.decode("utf-8", errors="surrogateescape").splitlines(keepends=True)
            a = f"a/{ch.path}"
        for line in difflib.unified_diff(old_lines, new_lines, a, f"b/{ch.path}", n=3):
            if not line.endswith("\n"):
                line += "\n\\ No newline at end of file\n"
            out.append(line)
    return "".join(out)


def write(root: Path, changes: list[Change]) -> None:
    """Atomic per file; existing files keep their mode."""
    for ch in changes:
        dest = root / ch.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        mode = dest.stat().st_mode & 0o7777 if dest.exists() else (ch.mode or 0o644)
        fd, tmp = tempfile.mkstemp(prefix=".secretsd-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(ch.new)
            os.chmod(tmp, mode)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class GitError(RuntimeError):
    pass


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise GitError(f"git {args[0]}: {msg}")
    return proc.stdout


def check_git(root: Path, changes: list[Change], branch: str) -> None:
    """Refuse before touching anything: not a repo, dirty files, branch exists."""
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel").strip())
    except (GitError, FileNotFoundError) as exc:
        raise GitError(f"{root} is not a git repository ({exc})") from None
    if top.resolve() != root.resolve():
        raise GitError(f"{root} is inside the repository {top}; pass the repository root")
    _git(root, "check-ref-format", "--branch", branch)
    if _git(root, "branch", "--list", branch).strip():
        raise GitError(f"branch {branch!r} already exists")
    dirty = _git(root, "status", "--porcelain", "--", *[c.path for c in changes]).strip()
    if dirty:
        raise GitError(f"uncommitted changes in files the patch touches:\n{dirty}")


def commit(root: Path, changes: list[Change], branch: str, notes: list[str]) -> str:
    """Branch from HEAD, write, one commit of exactly the changed files."""
    _git(root, "switch", "-q", "-c", branch)
    write(root, changes)
    paths = [c.path for c in changes]
    _git(root, "add", "--", *paths)
    body = "\n".join(f"- {n}" for n in notes)
    msg = ("Source /configs/secrets.d/load.sh in the entrypoint (secretsd patch)\n\n"
           "Pushed secrets are written to /configs/secrets.d; the entrypoint must load them\n"
           "at top level before it execs, drops privileges or reads the environment.\n\n" + body + "\n")
    _git(root, "commit", "-q", "-m", msg, "--", *paths)
    return _git(root, "rev-parse", "HEAD").strip()
