"""A fleet manifest, and fetching template repositories into a cache.

Manifest: JSON (full-line ``//`` comments allowed), either a list of
entries or ``{"templates": [...]}``; each entry is
``{"name", "repo", "ref"?, "runtime"?}``. ``repo`` is ``org/name`` (joined
to a git base URL), a git URL, or a local path (relative to the manifest).
Repos are fetched shallowly at the ref with real git.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_GIT_BASE = "https://github.com"
_SHA = re.compile(r"[0-9a-f]{40}")
_ORG_NAME = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


class ManifestError(ValueError):
    """The manifest is unreadable or malformed (exit 2)."""


class FetchError(RuntimeError):
    """git could not fetch a repository at a ref."""


@dataclass(frozen=True)
class Source:
    name: str
    url: str  # git URL or local path
    ref: str | None = None  # None: the default branch head
    runtime: str | None = None
    head: bool = False  # this is the --also-head companion of a pinned entry


def strip_comments(text: str) -> str:
    """Drop full-line ``//`` comments, keeping line numbers for JSON errors."""
    return "\n".join("" if ln.lstrip().startswith("//") else ln for ln in text.split("\n"))


def is_remote(repo: str) -> bool:
    return "://" in repo or repo.startswith("git@") or (":" in repo and "@" in repo.split(":")[0])


def repo_url(repo: str, base_dir: Path, git_base: str) -> str:
    if is_remote(repo):
        return repo
    if repo.startswith(("/", "./", "../", "~")):
        return str((base_dir / os.path.expanduser(repo)).resolve())
    if _ORG_NAME.fullmatch(repo):
        return f"{git_base.rstrip('/')}/{repo}" + ("" if repo.endswith(".git") else ".git")
    return str((base_dir / repo).resolve())


def load_manifest(path: str | Path, *, git_base: str = DEFAULT_GIT_BASE) -> list[Source]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {p}: {exc}") from None
    return parse_manifest(text, base_dir=p.resolve().parent, git_base=git_base, origin=str(p))


def parse_manifest(text: str, *, base_dir: Path, git_base: str = DEFAULT_GIT_BASE,
                   origin: str = "manifest") -> list[Source]:
    try:
        doc = json.loads(strip_comments(text))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{origin}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    entries = doc.get("templates") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise ManifestError(f"{origin}: expected a list of templates or {{\"templates\": [...]}}")
    out: list[Source] = []
    names: set[str] = set()
    for i, e in enumerate(entries):
        where = f"{origin}: entry {i + 1}"
        if not isinstance(e, dict):
            raise ManifestError(f"{where}: expected an object, got {type(e).__name__}")
        unknown = set(e) - {"name", "repo", "ref", "runtime"}
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        for key in ("name", "repo"):
            if not isinstance(e.get(key), str) or not e[key].strip():
                raise ManifestError(f"{where}: \"{key}\" must be a non-empty string")
        for key in ("ref", "runtime"):
            if key in e and e[key] is not None and (not isinstance(e[key], str) or not e[key].strip()):
                raise ManifestError(f"{where} ({e['name']}): \"{key}\" must be a non-empty string")
        if e["name"] in names:
            raise ManifestError(f"{where}: duplicate name {e['name']!r}")
        names.add(e["name"])
        out.append(Source(e["name"], repo_url(e["repo"], base_dir, git_base), e.get("ref"), e.get("runtime")))
    return out


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "secretsd" / "templates"


def _git(args: list[str], cwd: Path | None = None, timeout: float = 300) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FetchError(f"git {args[0]} timed out") from None
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise FetchError(f"git {args[0]}: {msg}")
    return proc.stdout.strip()


def fetch(url: str, ref: str | None, cache: Path) -> tuple[Path, str]:
    """Check out ``url`` at ``ref`` (default branch head when None) under the
    cache; returns (folder, commit sha). A pinned sha already in the cache is
    reused; anything else is fetched again (branches move)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", url.rstrip("/"))[-60:]
    key = hashlib.sha256(url.encode()).hexdigest()[:10]
    dest = cache / f"{slug}-{key}" / (ref if ref and _SHA.fullmatch(ref) else "head-" + re.sub(r"[^A-Za-z0-9_.-]", "_", ref or "HEAD"))
    if ref and _SHA.fullmatch(ref) and (dest / ".git").is_dir():
        try:
            if _git(["rev-parse", "HEAD"], cwd=dest) == ref:
                return dest, ref
        except FetchError:
            pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        _git(["init", "-q"], cwd=tmp)
        _git(["remote", "add", "origin", url], cwd=tmp)
        try:
            _git(["fetch", "-q", "--depth", "1", "origin", ref or "HEAD"], cwd=tmp)
        except FetchError:
            if not ref:
                raise
            # Servers that refuse a sha in `want`: fetch everything, then pick it.
            _git(["fetch", "-q", "origin", "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"], cwd=tmp)
            _git(["rev-parse", "--verify", "-q", ref + "^{commit}"], cwd=tmp)
            _git(["checkout", "-q", "--detach", ref], cwd=tmp)
        else:
            _git(["checkout", "-q", "--detach", "FETCH_HEAD"], cwd=tmp)
        sha = _git(["rev-parse", "HEAD"], cwd=tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest, sha
    except FetchError as exc:
        raise FetchError(f"{url}{'@' + ref if ref else ''}: {exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def parse_target(arg: str) -> tuple[str, str | None]:
    """``PATH_OR_URL[#REF]`` -> (path or url, ref)."""
    if "#" in arg:
        base, _, ref = arg.rpartition("#")
        if base and ref:
            return base, ref
    return arg, None
