"""Patch: golden outputs, idempotency, modes/CRLF/final newline, syntax and shellcheck."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretsd.templates import patch
from secretsd.templates.audit import audit_path
from secretsd.templates.shell import is_shell_text

from .conftest import FIXTURE_NAMES, FIXTURES, copy_fixture, expected, git

UNFIXABLE = {"ENV_WIPING_DROP", "UNRESOLVED_ENTRYPOINT"}  # need a person


def _golden(name: str) -> dict[str, bytes]:
    gold = FIXTURES / name / "patched"
    if not gold.is_dir():
        return {}
    return {str(p.relative_to(gold)): p.read_bytes() for p in gold.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_golden_patch(name: str, tmp_path: Path) -> None:
    root = copy_fixture(name, tmp_path)
    p = patch.plan(root)
    got = {c.path: c.new for c in p.changes}
    want = _golden(name)
    if patch.SHIM_REPO_PATH in got:
        # The shim is the package's own file (src/secretsd/format/sh/with-secrets).
        assert got.pop(patch.SHIM_REPO_PATH) == patch.shim_text().encode()
        assert [c.mode for c in p.changes if c.path == patch.SHIM_REPO_PATH] == [0o755]
    assert got == want
    if expected(name)["compliant"]:
        assert not p.changes  # never touch a compliant template


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_write_then_audit_idempotent_and_preserving(name: str, tmp_path: Path) -> None:
    root = copy_fixture(name, tmp_path)
    before_modes = {p: p.stat().st_mode for p in root.rglob("*") if p.is_file()}
    before_bytes = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    p = patch.plan(root)
    patch.write(root, p.changes)
    changed = {root / c.path for c in p.changes}
    for f, mode in before_modes.items():
        assert f.stat().st_mode == mode, f"mode changed: {f}"
        if f not in changed:
            assert f.read_bytes() == before_bytes[f], f"untouched file changed: {f}"
    for c in p.changes:
        if c.old is None:
            continue
        old, new = c.old.decode(), c.new.decode()
        assert old.endswith("\n") == new.endswith("\n"), "final newline changed"
        assert new.split("\n", 1)[0] == old.split("\n", 1)[0] or not old.startswith("#!"), "shebang moved"
        if "\r\n" in old:
            assert new.count("\n") == new.count("\r\n"), "CRLF file got LF lines"
    after = audit_path(root)
    left = {f.code for f in after.findings if f.severity.value == "error"}
    exp_codes = {f["code"] for f in expected(name)["findings"]}
    assert left == (exp_codes & UNFIXABLE)
    again = patch.plan(root)
    assert again.changes == [], "patching twice changed something"


def _shellcheck(text: str, shell: str) -> list[int]:
    proc = subprocess.run(["shellcheck", "-s", shell, "-f", "json1", "-"], input=text,
                          capture_output=True, text=True)
    return sorted(c["code"] for c in json.loads(proc.stdout)["comments"])


def _dialect(text: str) -> str:
    first = text.split("\n", 1)[0]
    return "bash" if "bash" in first else "sh"


PATCHED_SCRIPTS = [(n, rel) for n in FIXTURE_NAMES for rel in _golden(n)
                   if rel != "Dockerfile" and not rel.startswith("Dockerfile")]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("name,rel", PATCHED_SCRIPTS)
def test_patched_scripts_parse_and_gain_no_shellcheck_warnings(name: str, rel: str) -> None:
    old = (FIXTURES / name / "template" / rel).read_text().replace("\r\n", "\n")
    new = (FIXTURES / name / "patched" / rel).read_text().replace("\r\n", "\n")
    assert is_shell_text(new)
    shells = ["bash"] if _dialect(new) == "bash" else ["sh", "bash"]
    for sh in shells:
        subprocess.run([sh, "-n"], input=new, text=True, check=True)
    sh = _dialect(new)
    before, after = _shellcheck(old, sh), _shellcheck(new, sh)
    for code in set(after):
        assert after.count(code) <= before.count(code), f"new shellcheck SC{code} in {rel}"


def test_shim_passes_shellcheck() -> None:
    assert _shellcheck(patch.shim_text(), "sh") == []


def test_diff_applies_with_git_apply(tmp_path: Path) -> None:
    for name in ("bash_strict_late", "crlf_missing", "no_final_newline", "program_entrypoint"):
        root = copy_fixture(name, tmp_path / "a")
        written = copy_fixture(name, tmp_path / "b")
        p = patch.plan(root)
        patch.write(written, p.changes)
        diff = patch.unified_diff(p.changes)
        subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=root, input=diff.encode(),
                       check=True)
        for c in p.changes:
            assert (root / c.path).read_bytes() == (written / c.path).read_bytes(), name


# -- property: random entry scripts -----------------------------------------

_LINES = [
    'echo "starting"', 'echo "$TOKEN" > /tmp/t', 'exec agent-runtime "$@"', "gosu agent true",
    'X=1', 'echo "$X"', "# a comment", "", 'if [ -n "${DEBUG:-}" ]; then set -x; fi',
    "f() { echo hi; }", "f", "cat <<'EOF'\nliteral $NOPE\nEOF",
    'if [ "$(id -u)" = 0 ]; then\n  exec gosu agent "$0" "$@"\nfi',
    "if [ -f /configs/secrets.d/load.sh ]; then . /configs/secrets.d/load.sh; fi",
    "[ -f /configs/secrets.d/load.sh ] && . /configs/secrets.d/load.sh",
    ". /configs/secrets.d/load.sh",
    "load() {\n  . /configs/secrets.d/load.sh\n}",
]

scripts = st.builds(
    lambda shebang, header, set_line, body, crlf, final_nl: (
        shebang, header, set_line, body, crlf, final_nl),
    st.sampled_from(["#!/bin/sh", "#!/bin/bash", "#!/usr/bin/env bash"]),
    st.lists(st.sampled_from(["# entry", "# maintained by ops"]), max_size=2),
    st.sampled_from(["", "set -e", "set -euo pipefail"]),
    st.lists(st.sampled_from(_LINES), max_size=8),
    st.booleans(), st.booleans(),
)


def _render(shebang: str, header: list[str], set_line: str, body: list[str], crlf: bool,
            final_nl: bool) -> str:
    if set_line == "set -euo pipefail" and shebang == "#!/bin/sh":
        set_line = "set -eu"
    lines = [shebang, *header, *([set_line] if set_line else []), *body, 'exec agent-runtime "$@"']
    text = "\n".join(lines) + ("\n" if final_nl else "")
    return text.replace("\n", "\r\n") if crlf else text


DOCKERFILE = 'FROM python:3.12-slim\nCOPY e.sh /e.sh\nENTRYPOINT ["/e.sh"]\n'


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scripts)
def test_property_patch_once_is_enough(tmp_path_factory: pytest.TempPathFactory, parts: tuple) -> None:
    root = tmp_path_factory.mktemp("prop")
    (root / "Dockerfile").write_text(DOCKERFILE)
    text = _render(*parts)
    (root / "e.sh").write_bytes(text.encode())
    (root / "e.sh").chmod(0o640)
    p = patch.plan(root)
    patch.write(root, p.changes)
    new = (root / "e.sh").read_bytes().decode()
    assert (root / "e.sh").stat().st_mode & 0o777 == 0o640
    assert new.split("\n", 1)[0] == text.split("\n", 1)[0]
    assert new.endswith("\n") == text.endswith("\n")
    if "\r\n" in text:
        assert new.count("\n") == new.count("\r\n")
    res = audit_path(root)
    assert res.compliant, [f"{f.code} {f.message}" for f in res.findings]
    assert patch.plan(root).changes == []
    subprocess.run(["bash", "-n"], input=new.replace("\r\n", "\n"), text=True, check=True)


def test_unparseable_script_is_not_patched(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / "e.sh").write_text("#!/bin/sh\nif then (( \nexec agent\n")
    p = patch.plan(tmp_path)
    assert p.changes == []
    assert any("syntax error" in n for n in p.notes)
    assert p.remaining  # still reported, for a person


def test_two_dockerfiles_one_script_patched_once(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / "Dockerfile.dev").write_text(DOCKERFILE.replace("FROM python:3.12-slim", "FROM python:3.13"))
    (tmp_path / "e.sh").write_text('#!/bin/sh\nexec agent-runtime "$@"\n')
    p = patch.plan(tmp_path)
    (change,) = p.changes
    assert change.new.decode().count("load.sh ]; then") == 1
    assert p.after.compliant


def test_guard_moved_out_of_the_way_keeps_neighbours(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / "e.sh").write_text(
        "#!/bin/sh\n# entry\n\necho \"$MODE\"\n\n# secretsd: load secrets\n"
        "if [ -f /configs/secrets.d/load.sh ]; then . /configs/secrets.d/load.sh; fi\n\nexec agent\n")
    p = patch.plan(tmp_path)
    (change,) = p.changes
    assert change.new.decode() == (
        "#!/bin/sh\n# entry\n\n" + "\n".join(patch.BLOCK) + "\n\necho \"$MODE\"\n\nexec agent\n")
