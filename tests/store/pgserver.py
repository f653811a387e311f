"""A throwaway PostgreSQL cluster for tests: initdb in a temp dir, loopback only, torn down after.

initdb refuses to run as root, so as root the server runs as the ``postgres``
OS user (``runuser -u postgres --``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def find_bindir() -> Path | None:
    for cand in ["/usr/lib/postgresql/15/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if Path(cand, "initdb").exists() and Path(cand, "pg_ctl").exists():
            return Path(cand)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    bindir: Path
    root: Path
    port: int

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_pg(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def unavailable_reason() -> str | None:
    if find_bindir() is None:
        return "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin; Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' OS user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root but runuser (util-linux) is missing"
    return None


@contextmanager
def running_cluster() -> Iterator[PgCluster]:
    bindir = find_bindir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="secretsd-pg-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    root.chmod(0o700)
    port = _free_port()
    cluster = PgCluster(bindir, root, port)
    run = lambda argv: subprocess.run(_as_pg(argv), check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    started = False
    try:
        run([str(bindir / "initdb"), "-D", str(cluster.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
             "--no-sync", "--no-instructions"])
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=32MB"
        run([str(bindir / "pg_ctl"), "-D", str(cluster.datadir), "-o", opts, "-l", str(root / "server.log"),
             "-w", "-t", "60", "start"])
        started = True
        yield cluster
    finally:
        if started:
            subprocess.run(_as_pg([str(bindir / "pg_ctl"), "-D", str(cluster.datadir), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


_shared: dict[str, object] = {}


@contextmanager
def shared_cluster() -> Iterator[PgCluster]:
    """One cluster per test session, however many test folders ask for it."""
    if not _shared:
        cm = running_cluster()
        _shared.update(cm=cm, cluster=cm.__enter__(), refs=0)
    _shared["refs"] = int(_shared["refs"]) + 1  # type: ignore[call-overload]
    try:
        yield _shared["cluster"]  # type: ignore[misc]
    finally:
        _shared["refs"] = int(_shared["refs"]) - 1  # type: ignore[call-overload]
        if _shared["refs"] == 0:
            cm = _shared.pop("cm")
            _shared.clear()
            cm.__exit__(None, None, None)  # type: ignore[attr-defined]
