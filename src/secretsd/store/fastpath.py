"""The push hot path's statements, run on the driver's own cursor inside the Core transaction.

SQLAlchemy stays the engine, URL, pool, transaction and schema layer; only the
few statements every push runs skip Core's per-``execute`` machinery (compiled
cache lookup, execution context, parameter processing, events): ≈ 45–130 µs of
CPU each against 3–7 µs for the same statement on the ``sqlite3`` cursor.

Direct for sqlite3 (named ``:x`` parameters) and psycopg / psycopg2
(``%(x)s``); any other driver runs the same SQL text through Core's
``text()``, so every SQLAlchemy URL keeps working. Driver errors are wrapped
as SQLAlchemy's (``IntegrityError``, ``OperationalError``, …) with parameters
hidden, exactly as Core would raise them, so callers and handlers see no
difference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Dialect, text
from sqlalchemy.exc import DBAPIError

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")

_SAVEPOINT = "secretsd_put"


class FastPath:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        dbapi = dialect.loaded_dbapi
        self._error: type[Exception] = dbapi.Error
        driver = dialect.driver
        if dialect.name == "sqlite" and driver == "pysqlite":
            self._style = "named"  # sqlite3 takes :name with a dict as it is
        elif getattr(dbapi, "paramstyle", None) == "pyformat" and driver in ("psycopg", "psycopg2"):
            self._style = "pyformat"
        else:
            self._style = "core"  # any other driver: the same text through Core
        q = dialect.identifier_preparer.quote
        lock = "" if dialect.name == "sqlite" else " FOR UPDATE"
        # ON CONFLICT ... DO UPDATE: SQLite >= 3.24 and PostgreSQL >= 9.5 spell it alike.
        self.upsert = dialect.name in ("sqlite", "postgresql")
        self._sql: dict[str, str] = {}
        self._heads_lock = ("SELECT name, version, last_version, deleted, size, sha8 FROM secrets "
                            "WHERE owner = :o AND name IN ({names})" + lock)
        raw = {
            "owner": "SELECT id FROM workspaces WHERE id = :o",
            "live": "SELECT owner, name, size FROM secrets WHERE (owner = :g OR owner = :o) AND deleted = :f",
            "ins_version": "INSERT INTO secret_versions (owner, name, version, blob, key_version, encryption_version, "
                           "size, sha8, created_at, actor, action) VALUES (:owner, :name, :version, :blob, "
                           ":key_version, :encryption_version, :size, :sha8, :created_at, :actor, :action)",
            "ins_head": "INSERT INTO secrets (owner, name, version, last_version, deleted, size, sha8, updated_at) "
                        "VALUES (:owner, :name, :version, :last_version, :deleted, :size, :sha8, :updated_at)",
            "upd_head": "UPDATE secrets SET version = :version, last_version = :last_version, deleted = :deleted, "
                        "size = :size, sha8 = :sha8, updated_at = :updated_at WHERE owner = :owner AND name = :name",
            "prune": "DELETE FROM secret_versions WHERE owner = :owner AND name = :name AND version <= :upto",
            "ins_audit": f"INSERT INTO audit (at, actor, action, workspace, {q('key')}, version, sha8) "
                         "VALUES (:at, :actor, :action, :workspace, :key, :version, :sha8)",
            "mark": "INSERT INTO pending (workspace, name, since) VALUES (:workspace, :name, :since)"
                    + (" ON CONFLICT (workspace, name) DO UPDATE SET since = excluded.since" if self.upsert else ""),
            "unmark_one": "DELETE FROM pending WHERE workspace = :workspace AND name = :name",
            "clear": "DELETE FROM pending WHERE workspace = :ws AND name = :name AND since <= :upto",
            "clear_all": "DELETE FROM pending WHERE workspace = :ws AND since <= :upto",
            "ins_idem": "INSERT INTO idempotency (" + q("key") + ", scope, request_sha, status, body, created_at) "
                        "VALUES (:key, :scope, :request_sha, :status, :body, :created_at)",
        }
        for name, sql in raw.items():
            self._sql[name] = self._convert(sql)

    def _convert(self, sql: str) -> str:
        if self._style == "pyformat":
            return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))
        return sql

    def heads_sql(self, n: int) -> str:
        """Heads of ``n`` names of one owner, row-locked where the database can."""
        key = f"heads{n}"
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = self._convert(
                self._heads_lock.format(names=", ".join(f":n{i}" for i in range(n))))
        return sql

    # -- execution -------------------------------------------------------------

    def cursor(self, c: Connection) -> Any:
        """The driver's cursor for this transaction (None: go through Core)."""
        if self._style == "core":
            return None
        return c.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def run(self, c: Connection, cur: Any, name_or_sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """One statement; returns the rows (empty for a write)."""
        sql = self._sql.get(name_or_sql, name_or_sql)
        if cur is None:
            res = c.execute(text(sql), params or {})
            return list(res.all()) if res.returns_rows else []
        try:
            cur.execute(sql, params or {})
            return cur.fetchall() if cur.description is not None else []
        except self._error as exc:
            raise self._wrap(c, cur, sql, exc, False) from exc

    def many(self, c: Connection, cur: Any, name: str, rows: Sequence[dict[str, Any]]) -> None:
        """One statement for many parameter sets (executemany)."""
        if not rows:
            return
        sql = self._sql[name]
        if cur is None:
            c.execute(text(sql), list(rows))
            return
        try:
            if len(rows) == 1:
                cur.execute(sql, rows[0])
            else:
                cur.executemany(sql, rows)
        except self._error as exc:
            raise self._wrap(c, cur, sql, exc, True) from exc

    @contextmanager
    def savepoint(self, c: Connection, cur: Any) -> Iterator[None]:
        """A savepoint around one request of a group commit."""
        if cur is None:
            with c.begin_nested():
                yield
            return
        self.run(c, cur, f"SAVEPOINT {_SAVEPOINT}")
        try:
            yield
        except BaseException:
            self.run(c, cur, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            self.run(c, cur, f"RELEASE SAVEPOINT {_SAVEPOINT}")
            raise
        self.run(c, cur, f"RELEASE SAVEPOINT {_SAVEPOINT}")

    def _wrap(self, c: Connection, cur: Any, sql: str, exc: Exception, many: bool) -> BaseException:
        """The SQLAlchemy exception Core would have raised (parameters hidden: they hold ciphertexts)."""
        invalidated = False
        try:
            if self.dialect.is_disconnect(exc, c.connection.dbapi_connection, cur):
                c.invalidate(exc)
                invalidated = True
        except Exception:  # noqa: BLE001 - best effort; the original error matters
            pass
        return DBAPIError.instance(sql, None, exc, self._error, hide_parameters=True,
                                   connection_invalidated=invalidated, dialect=self.dialect, ismulti=many)
