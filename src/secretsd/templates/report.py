"""Render audit results: table (rich), json, markdown, sarif."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from io import StringIO

from rich.console import Console
from rich.table import Table

from secretsd import __version__
from secretsd.templates.audit import TemplateResult
from secretsd.templates.findings import CODES, Severity

FORMATS = ("table", "json", "markdown", "sarif")


def summary(results: Sequence[TemplateResult]) -> dict[str, object]:
    codes = Counter(f.code for r in results for f in r.findings)
    ok = sum(1 for r in results if r.compliant)
    return {
        "templates": len(results),
        "compliant": ok,
        "non_compliant": len(results) - ok,
        "findings": dict(sorted(codes.items())),
    }


def to_json(results: Sequence[TemplateResult]) -> str:
    doc = {"templates": [r.to_dict() for r in results], "summary": summary(results)}
    return json.dumps(doc, indent=2) + "\n"


def to_table(results: Sequence[TemplateResult], *, color: bool = False, width: int = 120) -> str:
    table = Table(show_lines=False)
    table.add_column("template", overflow="fold")
    table.add_column("compliant")
    table.add_column("findings", overflow="fold")
    for r in results:
        items = [f"{f.code} {f.file}:{f.line}" for f in r.findings if f.severity is Severity.ERROR]
        items += [f"({f.code} {f.file}:{f.line})" for f in r.findings if f.severity is not Severity.ERROR]
        mark = "[green]yes[/]" if r.compliant else "[red]no[/]"
        table.add_row(r.name + (f"@{r.ref[:12]}" if r.ref else ""), mark, "\n".join(items) or "-")
    s = summary(results)
    buf = StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=width)
    console.print(table)
    console.print(f"{s['compliant']}/{s['templates']} templates compliant")
    return buf.getvalue()


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(results: Sequence[TemplateResult]) -> str:
    s = summary(results)
    lines = [
        "## secretsd template audit",
        "",
        f"{s['compliant']} of {s['templates']} templates source `/configs/secrets.d/load.sh` correctly.",
        "",
        "| | template | ref | findings |",
        "|---|---|---|---|",
    ]
    for r in results:
        codes = ", ".join(sorted({f"`{f.code}`" for f in r.findings})) or "-"
        box = "[x]" if r.compliant else "[ ]"
        lines.append(f"| {box} | {_md(r.name)} | {r.ref[:12] if r.ref else '-'} | {codes} |")
    for r in results:
        if not r.findings:
            continue
        lines += ["", f"### {_md(r.name)}", ""]
        for f in r.findings:
            lines.append(f"- **{f.code}** ({f.severity}) `{f.file}:{f.line}`: {_md(f.message)}")
    return "\n".join(lines) + "\n"


_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.NOTE: "note"}


def to_sarif(results: Sequence[TemplateResult]) -> str:
    rules = [
        {
            "id": c.name,
            "name": c.name.title().replace("_", ""),
            "shortDescription": {"text": c.title},
            "defaultConfiguration": {"level": _SARIF_LEVEL[c.severity]},
            "help": {"text": "See docs/templates.md, section 'Finding codes'."},
        }
        for c in CODES.values()
    ]
    multi = len(results) > 1
    out = []
    for r in results:
        for f in r.findings:
            uri = f"{r.name}/{f.file}" if multi else f.file
            loc: dict[str, object] = {"artifactLocation": {"uri": uri}}
            if f.line > 0:
                loc["region"] = {"startLine": f.line}
            out.append({
                "ruleId": f.code,
                "level": _SARIF_LEVEL[f.severity],
                "message": {"text": f.message},
                "locations": [{"physicalLocation": loc}],
            })
    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "secretsd-audit", "version": __version__, "rules": rules}},
            "results": out,
        }],
    }
    return json.dumps(doc, indent=2) + "\n"


def render(results: Sequence[TemplateResult], fmt: str, *, color: bool = False) -> str:
    if fmt == "json":
        return to_json(results)
    if fmt == "markdown":
        return to_markdown(results)
    if fmt == "sarif":
        return to_sarif(results)
    return to_table(results, color=color)
