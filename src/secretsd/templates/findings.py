"""Finding codes of the template audit: what each means and how bad it is.

A template is compliant when none of its findings has severity ``error``.
``docs/templates.md`` is the prose version of :data:`CODES`; keep them in step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class Severity(str, Enum):
    ERROR = "error"  # the pushed secret will not reach the agent (or may not)
    WARNING = "warning"  # works, but fragile or leaky
    NOTE = "note"  # worth knowing, no action needed

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Code:
    name: str
    severity: Severity
    title: str


def _c(name: str, severity: Severity, title: str) -> Code:
    return Code(name, severity, title)


E, W, N = Severity.ERROR, Severity.WARNING, Severity.NOTE

CODES: dict[str, Code] = {
    c.name: c
    for c in (
        _c("MISSING", E, "The entrypoint never sources /configs/secrets.d/load.sh."),
        _c("COMMENT_ONLY", E, "secrets.d/load.sh is only mentioned in a comment."),
        _c("AFTER_EXEC", E, "The guard runs after an exec, so it may never run."),
        _c("AFTER_PRIVDROP", E, "The guard runs after a privilege drop (gosu, su, ...)."),
        _c("AFTER_ENV_USE", E, "The guard runs after a command that reads the environment."),
        _c("NOT_TOP_LEVEL", E, "The guard is inside a function, branch, loop or subshell."),
        _c("SOURCE_IN_SH", E, "`source` under /bin/sh (dash has no `source`)."),
        _c("RELATIVE_PATH", E, "load.sh is sourced by a relative path (`.` then searches PATH)."),
        _c("UNGUARDED", E, "load.sh is sourced without the `[ -f ... ]` guard."),
        _c("ENV_WIPING_DROP", E, "A privilege drop that wipes the environment (su -, sudo ...)."),
        _c("NO_SCRIPT", E, "Exec-form program entrypoint: no script to load secrets."),
        _c("UNRESOLVED_ENTRYPOINT", E, "The entrypoint could not be traced to a file in the repo."),
        _c("FETCH_FAILED", E, "The template repository could not be fetched."),
        _c("CRLF", W, "The script has CRLF line endings."),
        _c("XTRACE", W, "`set -x` is on when the loader runs: values go to the log."),
        _c("NO_SHEBANG", W, "An executed script has no #! line."),
        _c("CMD_ONLY", N, "The entry script is started by CMD, which `docker run IMAGE cmd` replaces."),
        _c("RELATIVE_ENTRYPOINT", N, "The entrypoint is a path relative to WORKDIR."),
    )
}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    file: str  # repo-relative path
    line: int  # 1-based; 0 when the finding is about the whole template
    message: str

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d


def finding(code: str, file: str, line: int, message: str, severity: Severity | None = None) -> Finding:
    """A finding with the code's default severity unless one is given."""
    return Finding(code, severity or CODES[code].severity, file, line, message)


def is_compliant(findings: list[Finding]) -> bool:
    return not any(f.severity is Severity.ERROR for f in findings)
