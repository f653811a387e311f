"""Engine construction: SQLite (WAL, durable commits) by default, any SQLAlchemy URL otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

DB_ENV = "SECRETSD_DB"
DEFAULT_DB_NAME = "secretsd.db"


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / DEFAULT_DB_NAME}"


def make_engine(url: str, *, pool_size: int = 16) -> Engine:
    """Build an engine. Parameters are hidden from errors: they hold ciphertexts."""
    parsed = make_url(url)
    kw: dict[str, Any] = {"hide_parameters": True, "future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            db = Path(parsed.database)
            db.parent.mkdir(parents=True, exist_ok=True)
            # SQLite gives -wal and -shm the main file's mode: create it 0600.
            os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o600))
            kw.update(pool_size=pool_size, max_overflow=pool_size * 2, pool_timeout=60)
        kw["connect_args"] = {"check_same_thread": False, "timeout": 60}
        engine = create_engine(url, **kw)
        path = Path(parsed.database) if parsed.database and parsed.database != ":memory:" else None
        _sqlite_pragmas(engine, path)
        return engine
    kw.update(pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True, pool_timeout=60)
    return create_engine(url, **kw)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _sqlite_pragmas(engine: Engine, path: Path | None) -> None:
    # The file we opened. If it is deleted or replaced under a running server,
    # open connections keep writing to the unlinked inode and every "durable"
    # commit would vanish at the next start: refuse instead (503).
    opened = _identity(path) if path else None

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _rec: Any) -> None:
        # We issue BEGIN ourselves (below), so the driver must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns (the API answers after it).
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        # Deleted values' ciphertext pages are zeroed, not left in free pages.
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Writers take the lock up front: a deferred transaction that upgrades
        # to a write fails with SQLITE_BUSY instead of waiting.
        if path is not None and _identity(path) != opened:
            raise OperationalError("BEGIN", None, Exception(f"database file {path.name} was deleted or replaced"))
        mode = "IMMEDIATE" if conn.get_execution_options().get("secretsd_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")
