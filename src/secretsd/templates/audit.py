"""Judge one template: is the guard executed at top level before the first
exec, privilege drop and environment read, on every Dockerfile's entry chain?"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from secretsd.templates.chain import Entry, Flat, analyse_dockerfile, find_dockerfiles
from secretsd.templates.findings import CODES, Finding, Severity, finding, is_compliant
from secretsd.templates.shell import Script
from secretsd.templates.tree import Tree

_AFTER = {"exec": "AFTER_EXEC", "privdrop": "AFTER_PRIVDROP", "env": "AFTER_ENV_USE"}


@dataclass
class TemplateResult:
    name: str
    path: str
    ref: str | None
    findings: list[Finding] = field(default_factory=list)
    entry_chain: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)

    @property
    def compliant(self) -> bool:
        return is_compliant(self.findings)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": self.path,
            "ref": self.ref,
            "compliant": self.compliant,
            "entry_chain": self.entry_chain,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass
class GuardVerdict:
    good: Flat | None  # the guard that makes the chain compliant
    first_barrier: Flat | None  # earliest exec/privdrop/env read (entry order)


def barrier_kind(fl: Flat) -> str | None:
    ev = fl.ev
    if ev.self_exec:
        return None  # re-runs this script from the top: the guard runs again
    if ev.kind in ("exec", "privdrop", "env"):
        return ev.kind
    if ev.kind == "run" and ev.is_exec and fl.resolved is None:
        return "exec"
    return None


def guard_ok(fl: Flat) -> bool:
    ev = fl.ev
    return (
        ev.kind == "guard" and fl.top and ev.guarded and not ev.relative
        and not (ev.uses_source and fl.dialect == "sh")
    )


def verdict(entry: Entry) -> GuardVerdict:
    first: Flat | None = None
    for fl in entry.flat:
        if fl.ev.kind == "guard" and guard_ok(fl) and first is None:
            return GuardVerdict(fl, None)
        if first is None and barrier_kind(fl):
            first = fl
    return GuardVerdict(None, first)


def _where(fl: Flat) -> str:
    return f"{fl.file}:{fl.ev.line}"


def entry_findings(entry: Entry) -> list[Finding]:
    out: list[Finding] = []
    df = entry.dockerfile
    cmd_line = entry.command.line if entry.command else 0
    if entry.kind == "wrapper":
        return out
    if entry.kind == "unresolved":
        return [finding("UNRESOLVED_ENTRYPOINT", df, cmd_line, entry.reason)]
    if entry.kind == "program":
        return [finding("NO_SCRIPT", df, cmd_line,
                        f"{entry.reason}; wrap it with /usr/local/bin/with-secrets (secretsd patch does this)")]
    if entry.relative:
        out.append(finding("RELATIVE_ENTRYPOINT", df, cmd_line,
                           f"entrypoint is relative to WORKDIR {entry.spec.workdir if entry.spec else '/'}"))
    if entry.instruction == "CMD" and entry.kind == "script":
        out.append(finding("CMD_ONLY", df, cmd_line,
                           "the entry script is in CMD; `docker run IMAGE other-cmd` skips it"))
    if entry.script and not entry.via_shell:
        s = entry.scripts[entry.script]
        if s.shebang is None:
            out.append(finding("NO_SHEBANG", entry.script, 1, "executed directly but has no #! line"))
    if entry.kind == "inline" and len(entry.scripts) == 1 and verdict(entry).good is None and not any(
        fl.ev.kind == "guard" for fl in entry.flat
    ):
        # `ENTRYPOINT prog args` (shell form) reaching no script: a program.
        out.append(finding("NO_SCRIPT", df, cmd_line,
                           f"`{entry.command.raw if entry.command else ''}` runs a program through "
                           "the shell; wrap it with /usr/local/bin/with-secrets (secretsd patch does this)"))
        return out
    out.extend(_guard_findings(entry))
    xt = False
    good = verdict(entry).good
    for fl in entry.flat:
        ev = fl.ev
        if ev.kind == "xtrace":
            xt = ev.detail == "on"
        elif fl is good and xt:
            out.append(finding("XTRACE", fl.file, ev.line,
                               "set -x is on here: the loader's assignments, values included, go to the log"))
        elif ev.kind == "wipe":
            starts_agent = ev.is_exec or ev.final
            out.append(finding(
                "ENV_WIPING_DROP", fl.file, ev.line,
                f"`{ev.detail}` starts a clean environment, so loaded secrets do not reach it; "
                "use gosu/su-exec/`su` without `-`/`sudo -E`",
                None if starts_agent else Severity.WARNING))
        elif ev.kind == "source" and ev.uses_source and fl.dialect == "sh":
            out.append(finding("SOURCE_IN_SH", fl.file, ev.line,
                               "`source` does not exist in dash (/bin/sh); use `.`", Severity.WARNING))
    for rel, s in entry.scripts.items():
        if s.crlf:
            out.append(finding("CRLF", rel, 1, "CRLF line endings: `#!/bin/sh\\r` cannot start; "
                                               "the build must convert them"))
    return out


def entry_script(entry: Entry) -> str | None:
    """The repo script that should hold the guard: the entry script, or for
    a shell-form command the first script it reaches."""
    if entry.script:
        return entry.script
    reached = [k for k in entry.scripts if k != entry.dockerfile and not k.startswith(entry.dockerfile + ":")]
    return reached[0] if reached else None


def _guard_findings(entry: Entry) -> list[Finding]:
    v = verdict(entry)
    if v.good is not None:
        return []
    out: list[Finding] = []
    script = entry_script(entry) or entry.dockerfile
    guards = [fl for fl in entry.flat if fl.ev.kind == "guard"]
    if not guards:
        mentions = [(rel, line) for rel, s in entry.scripts.items() for line in s.mentions]
        if mentions:
            rel, line = mentions[0]
            return [finding("COMMENT_ONLY", rel, line,
                            "secrets.d/load.sh appears only in a comment; nothing sources it")]
        return [finding("MISSING", script, 1, "the entry chain never sources /configs/secrets.d/load.sh")]
    seen_barriers: dict[str, Flat] = {}
    by_guard: dict[int, dict[str, Flat]] = {}
    for fl in entry.flat:
        k = barrier_kind(fl)
        if k and k not in seen_barriers:
            seen_barriers[k] = fl
        if fl.ev.kind == "guard":
            by_guard[id(fl)] = dict(seen_barriers)
    for g in guards:
        ev, where = g.ev, _where(g)
        if ev.relative:
            out.append(finding("RELATIVE_PATH", g.file, ev.line,
                               f"sources {ev.target} by a relative path; use /configs/secrets.d/load.sh"))
        if ev.uses_source and g.dialect == "sh":
            out.append(finding("SOURCE_IN_SH", g.file, ev.line,
                               "`source` under /bin/sh: dash has no `source`, the loader never runs"))
        if not g.top:
            out.append(finding("NOT_TOP_LEVEL", g.file, ev.line,
                               "the guard is inside a function, branch, loop or subshell; "
                               "it must run unconditionally at top level"))
        elif not ev.guarded:
            out.append(finding("UNGUARDED", g.file, ev.line,
                               "load.sh is sourced without `[ -f ... ]`: without the volume the "
                               "script aborts"))
        for kind, b in by_guard[id(g)].items():
            out.append(finding(_AFTER[kind], g.file, ev.line,
                               f"the guard at {where} comes after {_describe(b)}"))
    return out


def _describe(fl: Flat) -> str:
    ev = fl.ev
    if ev.kind == "env":
        return f"${ev.detail} is read at {_where(fl)}"
    if ev.kind == "privdrop":
        return f"the privilege drop `{ev.detail}` at {_where(fl)}"
    return f"`{ev.detail}` at {_where(fl)}"


def audit_tree(tree: Tree, *, name: str | None = None, path: str | None = None,
               ref: str | None = None) -> TemplateResult:
    root = tree.root
    res = TemplateResult(name or Path(root).resolve().name, path or str(root), ref)
    dockerfiles = find_dockerfiles(tree)
    if not dockerfiles:
        res.findings.append(finding("UNRESOLVED_ENTRYPOINT", ".", 0, "no Dockerfile in the template"))
        return res
    cache: dict[tuple[str, str], Script] = {}
    for df in dockerfiles:
        entry = analyse_dockerfile(tree, df, cache)
        res.entries.append(entry)
        res.entry_chain.extend(c for c in entry.chain if c not in res.entry_chain)
        for f in entry_findings(entry):
            if f not in res.findings:
                res.findings.append(f)
    res.findings.sort(key=lambda f: (_SEV_ORDER[f.severity], f.file, f.line, f.code))
    return res


_SEV_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.NOTE: 2}


def audit_path(path: str | Path, *, name: str | None = None, ref: str | None = None) -> TemplateResult:
    return audit_tree(Tree(path), name=name, path=str(path), ref=ref)


__all__ = ["CODES", "TemplateResult", "audit_path", "audit_tree", "verdict"]
