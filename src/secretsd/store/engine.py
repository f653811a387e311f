"""Engine construction: SQLite (WAL, durable commits) by default, any SQLAlchemy URL otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

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
        _sqlite_pragmas(engine)
        return engine
    kw.update(pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True, pool_timeout=60)
    return create_engine(url, **kw)


def _sqlite_pragmas(engine: Engine) -> None:
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
        mode = "IMMEDIATE" if conn.get_execution_options().get("secretsd_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")
