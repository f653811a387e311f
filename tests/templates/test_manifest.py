"""Manifests and fetching with real git (local bare repos as remotes, file:// URLs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from secretsd.templates.commands import audit
from secretsd.templates.manifest import fetch, parse_manifest

from .conftest import FIXTURES, git


@pytest.fixture
def remotes(tmp_path: Path) -> dict[str, str]:
    """org/fleet-a: pinned commit lacks the guard, head has it. Returns shas."""
    base = tmp_path / "remotes" / "org"
    base.mkdir(parents=True)
    work = tmp_path / "work"
    shutil.copytree(FIXTURES / "sh_reexec_missing" / "template", work)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "no guard")
    old = git(work, "rev-parse", "HEAD")
    shutil.copy(FIXTURES / "sh_reexec_missing" / "patched" / "entrypoint.sh", work / "entrypoint.sh")
    git(work, "commit", "-q", "-am", "guard")
    new = git(work, "rev-parse", "HEAD")
    git(tmp_path, "clone", "-q", "--bare", str(work), str(base / "fleet-a.git"))
    return {"old": old, "new": new, "base": (tmp_path / "remotes").as_uri()}


def test_manifest_comments_and_forms(tmp_path: Path) -> None:
    text = '// fleet\n[\n  // pinned\n  {"name": "a", "repo": "org/a", "ref": "main"},\n' \
           '  {"name": "b", "repo": "file:///srv/b.git", "runtime": "sandbox"},\n' \
           '  {"name": "c", "repo": "./local/c"}\n]\n'
    srcs = parse_manifest(text, base_dir=tmp_path, git_base="file:///remotes")
    assert [s.url for s in srcs] == ["file:///remotes/org/a.git", "file:///srv/b.git",
                                     str(tmp_path / "local" / "c")]
    assert srcs[0].ref == "main" and srcs[1].runtime == "sandbox"


def test_manifest_pinned_and_head(tmp_path: Path, remotes: dict[str, str]) -> None:
    m = tmp_path / "fleet.json"
    m.write_text("// our fleet\n" + json.dumps({"templates": [
        {"name": "fleet-a", "repo": "org/fleet-a", "ref": remotes["old"], "runtime": "sandbox"},
        {"name": "gone", "repo": "org/does-not-exist", "ref": remotes["old"]},
    ]}))
    cache = tmp_path / "cache"
    args = ["--manifest", str(m), "--also-head", "--git-base", remotes["base"], "--cache", str(cache),
            "--format", "json"]
    r = CliRunner().invoke(audit, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    by = {t["name"]: t for t in doc["templates"]}
    assert set(by) == {"fleet-a", "fleet-a@HEAD", "gone", "gone@HEAD"}
    assert by["fleet-a"]["ref"] == remotes["old"] and not by["fleet-a"]["compliant"]
    assert by["fleet-a@HEAD"]["ref"] == remotes["new"] and by["fleet-a@HEAD"]["compliant"]
    assert [f["code"] for f in by["gone"]["findings"]] == ["FETCH_FAILED"]
    # The pinned checkout is shallow and reused on the next run.
    pinned = [p for p in cache.rglob(remotes["old"]) if p.is_dir()]
    assert len(pinned) == 1 and git(pinned[0], "rev-parse", "--is-shallow-repository") == "true"
    marker = pinned[0] / ".reused"
    marker.write_text("x")
    assert CliRunner().invoke(audit, args).exit_code == 0
    assert marker.exists()
    r = CliRunner().invoke(audit, [*args, "--check"])
    assert r.exit_code == 1


def test_path_with_ref(tmp_path: Path, remotes: dict[str, str]) -> None:
    url = remotes["base"] + "/org/fleet-a.git"
    cache = tmp_path / "c"
    r = CliRunner().invoke(audit, [f"{url}#{remotes['new']}", "--check", "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(audit, [f"{url}#{remotes['old']}", "--check", "--cache", str(cache)])
    assert r.exit_code == 1


def test_fetch_unknown_ref_fails_clearly(tmp_path: Path, remotes: dict[str, str]) -> None:
    from secretsd.templates.manifest import FetchError

    with pytest.raises(FetchError, match="fleet-a.git@0{40}"):
        fetch(remotes["base"] + "/org/fleet-a.git", "0" * 40, tmp_path / "c")
    path, sha = fetch(remotes["base"] + "/org/fleet-a.git", "main", tmp_path / "c")
    assert sha == remotes["new"] and (path / "entrypoint.sh").is_file()
