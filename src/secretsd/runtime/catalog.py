"""Templates by name, and choosing the runtime a control plane runs with.

Over HTTP a workspace names its template (``{"template": "sh-reexec"}``);
the control plane never takes a host path from a client. ``TemplateCatalog``
maps a name to a folder of one templates directory (one folder per
template, its Dockerfile at the root), refusing anything that is not a plain
name or that leads outside the directory (``..``, slashes, symlinks out).
``CatalogRuntime`` wraps a runtime so that ``provision`` gets the resolved
folder; every other call passes through.

``select_runtime`` is what ``secretsd serve`` calls: the runtime by name, or
None with the reason when it cannot work on this host (the control plane
then serves secrets only, and restart routes answer 501 with that reason).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import secretsd
from secretsd.runtime.base import InvalidWorkspace, RestartMode, Runtime, WorkspaceError, WorkspaceSpec, WorkspaceStatus

#: A template name: one folder name, no separators, no leading dot.
TEMPLATE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

RUNTIMES = ("sandbox", "docker", "none")


def repo_examples() -> Path | None:
    """``examples/`` of the source checkout this package runs from (an
    editable install, as ``make`` does), else of the current folder."""
    for base in (Path(secretsd.__file__).resolve().parents[2], Path.cwd()):
        if (base / "examples" / "templates").is_dir():
            return base / "examples"
    return None


class TemplateCatalog:
    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).resolve() if root is not None else None

    def names(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if TEMPLATE_NAME_RE.fullmatch(p.name) and (p / "Dockerfile").is_file() and self._inside(p))

    def _inside(self, path: Path) -> bool:
        assert self.root is not None
        return path.resolve().is_relative_to(self.root)

    def resolve(self, name: str | None) -> Path:
        """The template folder for ``name``; InvalidWorkspace (HTTP 400) otherwise."""
        if self.root is None:
            raise InvalidWorkspace("no templates folder is configured on this control plane (serve --templates DIR)")
        available = ", ".join(self.names()) or "none"
        if name is None:
            raise InvalidWorkspace(f"a template is needed to provision a workspace (available: {available})")
        if not TEMPLATE_NAME_RE.fullmatch(name):
            raise InvalidWorkspace(f"invalid template name {name[:80]!r}: a folder name of the templates "
                                   f"folder, [A-Za-z0-9_.-] (available: {available})")
        path = self.root / name
        if not (path / "Dockerfile").is_file() or not self._inside(path):
            raise InvalidWorkspace(f"unknown template {name!r} (available: {available})")
        return path.resolve()


class CatalogRuntime:
    """A runtime whose ``provision`` takes template names from a catalog."""

    def __init__(self, inner: Runtime, catalog: TemplateCatalog) -> None:
        self.inner = inner
        self.catalog = catalog
        self.name = inner.name

    def provision(self, spec: WorkspaceSpec) -> None:
        """A workspace without a template is secrets only (it runs elsewhere): nothing to start."""
        if spec.template is None:
            return
        folder = self.catalog.resolve(spec.template)
        self.inner.provision(dataclasses.replace(spec, template=str(folder)))

    def start(self, id: str) -> None:
        self.inner.start(id)

    def stop(self, id: str) -> None:
        self.inner.stop(id)

    def restart(self, id: str, mode: RestartMode) -> None:
        self.inner.restart(id, mode)

    def status(self, id: str) -> WorkspaceStatus:
        return self.inner.status(id)

    def remove(self, id: str) -> None:
        self.inner.remove(id)

    def main_environ(self, id: str) -> dict[str, bytes]:
        return self.inner.main_environ(id)

    def __getattr__(self, attr: str) -> Any:  # extras: log_path, main_pid, list...
        return getattr(self.inner, attr)


@dataclass
class Selection:
    runtime: CatalogRuntime | None
    message: str  # one line for the operator: what runs, or why nothing does
    unavailable: str | None = None  # the reason, when the wanted runtime cannot run here


def default_templates() -> Path | None:
    ex = repo_examples()
    return ex / "templates" if ex else None


def images_for(templates: Path | None) -> dict[str, Path]:
    """Local base images: ``images.json`` next to or inside the templates folder."""
    from secretsd.runtime import load_images

    if templates is None:
        return {}
    for cand in (templates.parent / "images.json", templates / "images.json"):
        if cand.is_file():
            return load_images(cand)
    return {}


def select_runtime(name: str, data_dir: str | Path, templates: str | Path | None) -> Selection:
    """The runtime ``serve`` wires in; never raises for an unavailable one."""
    from secretsd.runtime import make_runtime

    if name == "none":
        return Selection(None, "workspace runtime: none (secrets only; restart routes answer 501)")
    tdir = Path(templates).resolve() if templates is not None else None
    if tdir is not None and not tdir.is_dir():
        raise InvalidWorkspace(f"templates folder {tdir} does not exist")
    try:
        images = images_for(tdir)
        inner = make_runtime(name, data_dir, images)
        if name == "docker":
            inner.client  # type: ignore[attr-defined]  # reach the engine now, not on the first request
    except WorkspaceError as exc:
        reason = str(exc)
        return Selection(None, f"workspace runtime: none -- {reason}; serving secrets only, "
                               "restart routes answer 501", unavailable=reason)
    catalog = TemplateCatalog(tdir)
    names = catalog.names()
    where = f"templates from {tdir} ({', '.join(names) or 'none found'})" if tdir else \
        "no templates folder (pass --templates DIR to provision workspaces)"
    return Selection(CatalogRuntime(inner, catalog), f"workspace runtime: {name}; {where}")
