"""``secretsd audit`` and ``secretsd patch`` (issue 5)."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

from secretsd.templates import report
from secretsd.templates.audit import TemplateResult, audit_path
from secretsd.templates.findings import finding
from secretsd.templates.manifest import (
    DEFAULT_GIT_BASE, FetchError, ManifestError, Source, default_cache, fetch, is_remote,
    load_manifest, parse_target,
)


class UsageFailure(click.ClickException):
    """A usage or validation error: exit 2 with a one-line message."""

    exit_code = 2


@dataclass
class _Job:
    name: str
    local: Path | None = None
    source: Source | None = None


def _git_head(path: Path) -> str | None:
    head = path / ".git" / "HEAD"
    if not head.is_file():
        return None
    import subprocess

    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _run_job(job: _Job, cache: Path) -> TemplateResult:
    try:
        return _audit_job(job, cache)
    except Exception as exc:  # one odd template must not sink a fleet audit
        res = TemplateResult(job.name, str(job.local or (job.source.url if job.source else "")), None)
        res.findings.append(finding("UNRESOLVED_ENTRYPOINT", ".", 0,
                                    f"could not analyse the template: {type(exc).__name__}: {exc}"))
        return res


def _audit_job(job: _Job, cache: Path) -> TemplateResult:
    if job.local is not None:
        return audit_path(job.local, name=job.name, ref=_git_head(job.local))
    src = job.source
    assert src is not None
    try:
        folder, sha = fetch(src.url, src.ref, cache)
    except FetchError as exc:
        res = TemplateResult(job.name, src.url, src.ref)
        res.findings.append(finding("FETCH_FAILED", ".", 0, str(exc)))
        return res
    return audit_path(folder, name=job.name, ref=sha)


def _jobs(paths: tuple[str, ...], manifest: str | None, also_head: bool, git_base: str) -> list[_Job]:
    if manifest and paths:
        raise UsageFailure("give template PATHs or --manifest, not both")
    if not manifest and not paths:
        raise UsageFailure("nothing to audit: give one or more template PATHs or --manifest FILE")
    jobs: list[_Job] = []
    if manifest:
        try:
            sources = load_manifest(manifest, git_base=git_base)
        except ManifestError as exc:
            raise UsageFailure(str(exc)) from None
        for s in sources:
            jobs.append(_Job(s.name, source=s))
            if also_head and s.ref:
                jobs.append(_Job(f"{s.name}@HEAD", source=Source(s.name, s.url, None, s.runtime, True)))
        return jobs
    for arg in paths:
        target, ref = parse_target(arg)
        if is_remote(target) or ref:
            if not is_remote(target) and not Path(target).is_dir():
                raise UsageFailure(f"template path {target!r} does not exist or is not a folder")
            url = target if is_remote(target) else str(Path(target).resolve())
            name = Path(target.rstrip("/")).name.removesuffix(".git")
            jobs.append(_Job(name, source=Source(name, url, ref)))
            if also_head and ref:
                jobs.append(_Job(f"{name}@HEAD", source=Source(name, url, None, None, True)))
        else:
            p = Path(target)
            if not p.is_dir():
                raise UsageFailure(f"template path {target!r} does not exist or is not a folder")
            jobs.append(_Job(p.resolve().name, local=p))
    return jobs


@click.command("audit")
@click.argument("paths", nargs=-1, metavar="[PATH[#REF]|URL[#REF]]...")
@click.option("--manifest", "manifest", type=click.Path(dir_okay=False), metavar="FILE",
              help="JSON list of {name, repo, ref?, runtime?} (// comment lines allowed).")
@click.option("--format", "fmt", type=click.Choice(report.FORMATS), default="table", show_default=True,
              help="table for people, json for tools, markdown for issues, sarif for code scanning.")
@click.option("--check", is_flag=True, help="Exit 1 when any template is not compliant (for CI).")
@click.option("--also-head", is_flag=True,
              help="Also audit the default branch head of each pinned repo (images build from it).")
@click.option("--cache", "cache", type=click.Path(file_okay=False), metavar="DIR",
              help="Where repos are cloned (default: $XDG_CACHE_HOME/secretsd/templates).")
@click.option("--git-base", default=DEFAULT_GIT_BASE, show_default=True, envvar="SECRETSD_GIT_BASE",
              help="Base URL for `org/name` repos in a manifest.")
@click.option("-j", "--jobs", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Repositories fetched and audited in parallel (local folders run in one thread).")
def audit(paths: tuple[str, ...], manifest: str | None, fmt: str, check: bool, also_head: bool,
          cache: str | None, git_base: str, jobs: int) -> None:
    """Check that each template's entrypoint sources /configs/secrets.d/load.sh
    at top level before it execs, drops privileges or reads the environment.

    A template is a folder, a git repository (local path or URL, optionally at
    PATH#REF), or an entry of a --manifest. Exit status: 0 done (or all
    compliant with --check), 1 some template is not compliant (--check only),
    2 usage error. Finding codes: see docs/templates.md.
    """
    job_list = _jobs(paths, manifest, also_head, git_base)
    cache_dir = Path(cache) if cache else default_cache()
    results: list[TemplateResult | None] = [None] * len(job_list)
    show = sys.stderr.isatty() and len(job_list) > 1
    remote = any(j.source for j in job_list)
    with _progress(show, len(job_list)) as advance:
        if remote and jobs > 1:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(_run_job, j, cache_dir): i for i, j in enumerate(job_list)}
                for fut, i in futures.items():
                    results[i] = fut.result()
                    advance()
        else:  # local audits are CPU-bound: threads would only add overhead
            for i, j in enumerate(job_list):
                results[i] = _run_job(j, cache_dir)
                advance()
    done = [r for r in results if r is not None]
    click.echo(report.render(done, fmt, color=sys.stdout.isatty()), nl=False)
    if check and not all(r.compliant for r in done):
        sys.exit(1)


class _progress:
    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total, self._p = show, total, None

    def __enter__(self):  # type: ignore[no-untyped-def]
        if not self.show:
            return lambda: None
        from rich.progress import Progress
        from rich.console import Console

        self._p = Progress(console=Console(stderr=True), transient=True)
        self._p.start()
        task = self._p.add_task("auditing", total=self.total)
        return lambda: self._p.advance(task)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()


@click.command("patch")
@click.argument("path", type=click.Path(file_okay=False), metavar="PATH")
@click.option("--diff", "mode", flag_value="diff", default=True,
              help="Print the change as a unified diff (default; changes nothing).")
@click.option("--write", "mode", flag_value="write", help="Apply the change to the files.")
@click.option("--branch", metavar="NAME", help="With --commit: create this branch from HEAD.")
@click.option("--commit", "do_commit", is_flag=True,
              help="With --branch: write and make one commit on the new branch.")
def patch(path: str, mode: str, branch: str | None, do_commit: bool) -> None:
    """Add the secrets guard to a template's entrypoint, correctly placed.

    Inserts `if [ -f /configs/secrets.d/load.sh ]; then . /configs/secrets.d/load.sh; fi`
    (with a one-line comment) at top level before the first exec, privilege
    drop or environment read; moves a guard that is too late; wraps a program
    ENTRYPOINT with /usr/local/bin/with-secrets. Keeps line endings, modes and
    everything else. Exit status: 0 compliant after the patch, 1 findings
    remain that need a person, 2 usage error.
    """
    from secretsd.templates import patch as patching

    root = Path(path)
    if not root.is_dir():
        raise UsageFailure(f"template path {path!r} does not exist or is not a folder")
    if bool(branch) != do_commit:
        raise UsageFailure("--branch NAME and --commit go together")
    p = patching.plan(root)
    if branch and p.changes:
        try:
            patching.check_git(root, p.changes, branch)
        except patching.GitError as exc:
            raise UsageFailure(str(exc)) from None
    if not p.changes:
        click.echo("nothing to change" + (": already compliant" if p.before.compliant else ""), err=True)
    elif branch:
        try:
            sha = patching.commit(root, p.changes, branch, p.notes)
        except patching.GitError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"committed {sha[:12]} on branch {branch}: {', '.join(c.path for c in p.changes)}",
                   err=True)
    elif mode == "write":
        patching.write(root, p.changes)
        for n in p.notes:
            if "not patched" not in n and "cannot patch" not in n:
                click.echo(n, err=True)
    else:
        click.echo(patching.unified_diff(p.changes), nl=False)
    for n in p.notes:
        if "not patched" in n or "cannot patch" in n:
            click.echo(n, err=True)
    for f in p.remaining:
        click.echo(f"not fixed: {f.code} {f.file}:{f.line}: {f.message}", err=True)
    if p.remaining:
        sys.exit(1)


commands = [audit, patch]
