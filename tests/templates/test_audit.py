"""The audit over the fixture corpus: every finding code, every field-notes shape."""

from __future__ import annotations

import pytest

from secretsd.templates.audit import audit_path
from secretsd.templates.findings import CODES
from secretsd.templates.shell import analyze

from .conftest import FIXTURE_NAMES, FIXTURES, expected


def test_corpus_size() -> None:
    assert len(FIXTURE_NAMES) >= 25


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_findings(name: str) -> None:
    exp = expected(name)
    res = audit_path(FIXTURES / name / "template", name=name)
    got = [{"code": f.code, "severity": f.severity.value, "file": f.file, "line": f.line}
           for f in res.findings]
    assert sorted(got, key=str) == sorted(exp["findings"], key=str)
    assert res.compliant is exp["compliant"]
    assert res.entry_chain == exp["entry_chain"]


def test_every_code_is_covered() -> None:
    seen = {f["code"] for n in FIXTURE_NAMES for f in expected(n)["findings"]}
    # FETCH_FAILED needs a repository that cannot be fetched: test_manifest covers it.
    assert set(CODES) - seen == {"FETCH_FAILED"}


@pytest.mark.parametrize("name", [
    "sh_reexec_guard_top", "sh_reexec_missing",  # shape 1
    "bash_strict_compliant", "bash_strict_late",  # shape 2
    "program_entrypoint",  # shape 3
    "legacy_cmd_relative",  # shape 4
])
def test_field_note_shapes_present(name: str) -> None:
    assert name in FIXTURE_NAMES


GUARD = "if [ -f /configs/secrets.d/load.sh ]; then . /configs/secrets.d/load.sh; fi"


def _guards(text: str, dialect: str | None = None) -> list:
    return [e for e in analyze(text, "/e.sh", dialect=dialect).events if e.kind == "guard"]


@pytest.mark.parametrize("text,dialect", [
    (f"#!/bin/sh\n{GUARD}\n", None),
    ("#!/bin/sh\nif [ -r /configs/secrets.d/load.sh ]; then\n  # shellcheck disable=SC1091\n"
     "  . /configs/secrets.d/load.sh\nfi\n", None),
    ("#!/bin/sh\n[ -f /configs/secrets.d/load.sh ] && . /configs/secrets.d/load.sh\n", None),
    ("#!/bin/sh\ntest -r '/configs/secrets.d/load.sh' && . '/configs/secrets.d/load.sh'\n", None),
    ("#!/bin/bash\n[[ -f /configs/secrets.d/load.sh ]] && source /configs/secrets.d/load.sh\n", None),
    ('#!/bin/sh\nD=/configs/secrets.d\nif [ -f "$D/load.sh" ]; then . "$D/load.sh"; fi\n', None),
])
def test_guard_variants_accepted(text: str, dialect: str | None) -> None:
    (g,) = _guards(text, dialect)
    assert g.guarded and g.top_level and not g.relative


def test_mentions_in_comments_and_strings_are_not_guards() -> None:
    text = "#!/bin/sh\n# . /configs/secrets.d/load.sh\necho '. /configs/secrets.d/load.sh'\n"
    s = analyze(text, "/e.sh")
    assert not [e for e in s.events if e.kind == "guard"]
    assert s.mentions == [2]


def test_guard_with_other_condition_is_unguarded() -> None:
    (g,) = _guards("#!/bin/sh\n[ -d /configs ] && . /configs/secrets.d/load.sh\n")
    assert not g.guarded


@pytest.mark.parametrize("line,wipes", [
    ("su - agent -c x", True), ("su -l agent -c x", True), ("su --login agent", True),
    ("runuser -l agent -c x", True), ("sudo -u agent x", True), ("sudo -E -u agent x", False),
    ("sudo --preserve-env -u agent x", False), ("su agent -c x", False),
    ("runuser -u agent -- x", False), ("gosu agent x", False), ("su-exec agent x", False),
    ("setpriv --reuid=1000 --regid=1000 --init-groups x", False),
])
def test_privdrop_env_wiping(line: str, wipes: bool) -> None:
    s = analyze(f"#!/bin/sh\n{line}\n", "/e.sh")
    kinds = [e.kind for e in s.events]
    assert "privdrop" in kinds
    assert ("wipe" in kinds) is wipes


def test_self_reexec_is_not_a_barrier() -> None:
    s = analyze('#!/bin/sh\nif [ "$(id -u)" = 0 ]; then exec gosu agent "$0" "$@"; fi\n', "/e.sh")
    (drop,) = [e for e in s.events if e.kind == "privdrop"]
    assert drop.self_exec


def test_variables_set_by_the_script_are_not_env_reads() -> None:
    text = ('#!/bin/sh\nX=1\necho "$X"\nfor i in a; do echo "$i"; done\nread -r L\necho "$L" "$HOME" "$1"\n'
            'echo "$TOKEN"\n')
    env = [e.detail for e in analyze(text, "/e.sh").events if e.kind == "env"]
    assert env == ["TOKEN"]


def test_function_called_before_guard_counts_where_called() -> None:
    text = f'#!/bin/sh\nsetup() {{ echo "$TOKEN"; }}\nsetup\n{GUARD}\n'
    s = analyze(text, "/e.sh")
    order = [e.kind for e in s.events]
    assert order.index("env") < order.index("guard")
    text2 = f'#!/bin/sh\nsetup() {{ echo "$TOKEN"; }}\n{GUARD}\nsetup\n'
    order2 = [e.kind for e in analyze(text2, "/e.sh").events]
    assert order2.index("guard") < order2.index("env")
