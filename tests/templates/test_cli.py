"""`secretsd audit` / `secretsd patch` end to end: formats, exit codes, git."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from secretsd.templates.commands import audit, patch

from .conftest import FIXTURES, copy_fixture, git

OK = FIXTURES / "bash_strict_compliant" / "template"
BAD = FIXTURES / "bash_strict_late" / "template"


def run(cmd, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cmd, [str(a) for a in args], catch_exceptions=False)


def test_json_format_exact_shape() -> None:
    r = run(audit, OK, BAD, "--format", "json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert set(doc) == {"templates", "summary"}
    for t in doc["templates"]:
        assert set(t) == {"name", "path", "ref", "compliant", "entry_chain", "findings"}
        for f in t["findings"]:
            assert set(f) == {"code", "severity", "file", "line", "message"}
    assert [t["compliant"] for t in doc["templates"]] == [True, False]
    assert doc["summary"]["templates"] == 2 and doc["summary"]["compliant"] == 1
    assert doc["summary"]["findings"] == {"AFTER_ENV_USE": 1, "AFTER_EXEC": 1, "AFTER_PRIVDROP": 1}


def test_check_exit_codes() -> None:
    assert run(audit, OK, "--check").exit_code == 0
    assert run(audit, OK, BAD, "--check").exit_code == 1
    assert run(audit, BAD).exit_code == 0  # without --check a report is a success


@pytest.mark.parametrize("fmt", ["table", "markdown", "sarif"])
def test_other_formats(fmt: str) -> None:
    r = run(audit, OK, BAD, "--format", fmt)
    assert r.exit_code == 0
    if fmt == "sarif":
        doc = json.loads(r.stdout)
        assert doc["version"] == "2.1.0"
        res = doc["runs"][0]["results"]
        assert {x["ruleId"] for x in res} == {"AFTER_ENV_USE", "AFTER_EXEC", "AFTER_PRIVDROP"}
        assert all(x["locations"][0]["physicalLocation"]["region"]["startLine"] == 26 for x in res)
    elif fmt == "markdown":
        # Both fixtures live in folders named "template".
        assert "| [x] | template | - | - |" in r.stdout
        assert "| [ ] | template | - | `AFTER_ENV_USE`, `AFTER_EXEC`, `AFTER_PRIVDROP` |" in r.stdout
        assert "**AFTER_EXEC** (error) `start.sh:26`" in r.stdout
    else:
        assert "AFTER_EXEC start.sh:26" in r.stdout and "1/2 templates compliant" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["/nonexistent/template"], "'/nonexistent/template' does not exist"),
    ([], "nothing to audit"),
    (["--format", "xml", str(OK)], "xml"),
])
def test_usage_errors_exit_2(args: list[str], needle: str) -> None:
    r = CliRunner().invoke(audit, args)
    assert r.exit_code == 2
    assert needle in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("text,needle", [
    ("{not json", "invalid JSON at line 1"),
    ('{"templates": 3}', "expected a list"),
    ('[{"name": "a"}]', 'entry 1: "repo" must be a non-empty string'),
    ('[{"name": "a", "repo": "x/y", "branch": "main"}]', "unknown field(s) branch"),
    ('[{"name": "a", "repo": "x/y"}, {"name": "a", "repo": "x/z"}]', "duplicate name 'a'"),
    ('[{"name": "a", "repo": "x/y", "ref": 5}]', '"ref" must be a non-empty string'),
])
def test_bad_manifest_exit_2(tmp_path: Path, text: str, needle: str) -> None:
    m = tmp_path / "fleet.json"
    m.write_text(text)
    r = CliRunner().invoke(audit, ["--manifest", str(m)])
    assert r.exit_code == 2, r.output
    assert needle in r.output and str(m) in r.output
    assert "Traceback" not in r.output


def test_missing_manifest_exit_2(tmp_path: Path) -> None:
    r = CliRunner().invoke(audit, ["--manifest", str(tmp_path / "nope.json")])
    assert r.exit_code == 2 and "cannot read manifest" in r.output


def test_installed_cli_registers_commands() -> None:
    exe = Path(sys.executable).with_name("secretsd")
    r = subprocess.run([str(exe), "audit", "--check", "--format", "json", str(BAD)],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["summary"]["non_compliant"] == 1
    r = subprocess.run([str(exe), "patch", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--branch" in r.stdout


# -- patch command ------------------------------------------------------------

def test_patch_diff_default_changes_nothing(tmp_path: Path) -> None:
    root = copy_fixture("sh_reexec_missing", tmp_path)
    before = (root / "entrypoint.sh").read_bytes()
    r = run(patch, root)
    assert r.exit_code == 0
    assert r.stdout.startswith("diff --git a/entrypoint.sh b/entrypoint.sh\n")
    assert "+if [ -f /configs/secrets.d/load.sh ]; then . /configs/secrets.d/load.sh; fi" in r.stdout
    assert (root / "entrypoint.sh").read_bytes() == before


def test_patch_write_then_check(tmp_path: Path) -> None:
    root = copy_fixture("program_entrypoint", tmp_path)
    assert run(patch, root, "--write").exit_code == 0
    assert run(audit, root, "--check").exit_code == 0
    r = run(patch, root, "--write")
    assert r.exit_code == 0 and "already compliant" in r.stderr


def test_patch_reports_what_it_cannot_fix(tmp_path: Path) -> None:
    root = copy_fixture("env_wiping_drop", tmp_path)
    r = run(patch, root)
    assert r.exit_code == 1
    assert "not fixed: ENV_WIPING_DROP entrypoint.sh:4" in r.stderr


def test_patch_usage_errors(tmp_path: Path) -> None:
    root = copy_fixture("sh_reexec_missing", tmp_path)
    for args, needle in [
        ([str(tmp_path / "nope")], "does not exist"),
        ([str(root), "--branch", "x"], "--branch NAME and --commit go together"),
        ([str(root), "--commit"], "--branch NAME and --commit go together"),
        ([str(root), "--branch", "fix", "--commit"], "not a git repository"),
    ]:
        r = CliRunner().invoke(patch, args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output and "Traceback" not in r.output


def _repo(tmp_path: Path, fixture: str) -> Path:
    root = copy_fixture(fixture, tmp_path)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def test_patch_branch_commit(tmp_path: Path) -> None:
    root = _repo(tmp_path, "program_entrypoint")
    (root / "NOTES.txt").write_text("unrelated work in progress\n")  # must stay out
    r = run(patch, root, "--branch", "secretsd/guard", "--commit")
    assert r.exit_code == 0, r.output
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "secretsd/guard"
    assert git(root, "rev-list", "--count", "main..HEAD") == "1"
    files = git(root, "show", "--name-status", "--format=", "HEAD").splitlines()
    assert sorted(files) == ["A\twith-secrets", "M\tDockerfile"]
    assert git(root, "ls-files", "-s", "with-secrets").startswith("100755")
    msg = git(root, "log", "-1", "--format=%B")
    assert msg.startswith("Source /configs/secrets.d/load.sh in the entrypoint")
    assert git(root, "status", "--porcelain") == "?? NOTES.txt"
    assert run(audit, root, "--check").exit_code == 0


def test_patch_branch_refuses_dirty_or_existing(tmp_path: Path) -> None:
    root = _repo(tmp_path, "sh_reexec_missing")
    git(root, "branch", "taken")
    r = CliRunner().invoke(patch, [str(root), "--branch", "taken", "--commit"])
    assert r.exit_code == 2 and "already exists" in r.output
    with (root / "entrypoint.sh").open("a") as f:
        f.write("# local edit\n")
    r = CliRunner().invoke(patch, [str(root), "--branch", "fix", "--commit"])
    assert r.exit_code == 2 and "uncommitted changes" in r.output
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "main"
