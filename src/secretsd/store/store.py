"""The system of record: encrypted, versioned secrets per workspace and global.

Every change is one database transaction that also writes its audit rows and
marks the affected workspace folders pending; the caller clears the marks
once the folder is written. Values exist in clear only in memory.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from secretsd.store import schema as S
from secretsd.store.crypto import ENC_AES_GCM, KeyRing
from secretsd.store.engine import make_engine
from secretsd.store.fastpath import FastPath
from secretsd.store.errors import AlreadyExists, NotFound, VersionConflict
from secretsd.store.models import (
    AuditEvent,
    Change,
    IdempotentAnswer,
    SecretMeta,
    VersionMeta,
    Workspace,
)

GLOBAL = S.GLOBAL
DEFAULT_KEEP_VERSIONS = 10
IDEMPOTENCY_TTL = 24 * 3600.0
_RETRIES = 5


# Prebuilt Core statements for the paths off the push hot path (which runs
# plain SQL on the driver's cursor: fastpath.py).
_H, _P = S.secrets, S.pending
_Q_OWNER = select(S.workspaces.c.id).where(S.workspaces.c.id == bindparam("o"))
_Q_HEADS = select(_H).where(_H.c.owner == bindparam("o"), _H.c.name.in_(bindparam("names", expanding=True)))
_Q_HEADS_LOCK = _Q_HEADS.with_for_update()
_Q_PENDING = select(_P.c.workspace, _P.c.name).where(
    _P.c.workspace.in_(bindparam("ws", expanding=True)), _P.c.name.in_(bindparam("names", expanding=True)))
_INS_PENDING = insert(_P)
_UPD_PENDING = update(_P).where(_P.c.workspace == bindparam("b_ws"), _P.c.name == bindparam("b_name")).values(
    since=bindparam("b_since"))
_DEL_PENDING = delete(_P).where(_P.c.workspace == bindparam("ws"), _P.c.name.in_(bindparam("names", expanding=True)),
                                _P.c.since <= bindparam("upto"))
_Q_LIVE = select(_H).where(_H.c.owner.in_(bindparam("owners", expanding=True)), _H.c.deleted.is_(False))


class _Head(NamedTuple):
    name: str
    version: int
    last_version: int
    deleted: bool
    size: int
    sha8: str


_NO_CURSOR: Any = object()


@dataclass(frozen=True)
class PutRequest:
    values: Mapping[str, bytes]
    actor: str
    expected: Mapping[str, int] | None = None
    idempotency: tuple[str, str, str, Callable[[Change], tuple[int, str]]] | None = None


def sha8(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:8]


def _aad(owner: str, name: str, version: int) -> bytes:
    return f"secretsd/secret/1\0{owner}\0{name}\0{version}".encode("utf-8", "surrogatepass")


def _env_aad(workspace: str) -> bytes:
    return f"secretsd/ws-env/1\0{workspace}".encode()


class Store:
    def __init__(
        self,
        engine: Engine,
        keyring: KeyRing,
        *,
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep_versions < 10:
            raise ValueError("keep_versions must be at least 10")
        self.engine = engine
        self.keyring = keyring
        # SQLite has one writer at a time and its busy handler sleeps in steps of
        # up to 100 ms: queue this process's writers on a lock instead.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self.keep_versions = keep_versions
        self.clock = clock
        self._fast = FastPath(engine.dialect)

    @classmethod
    def open(cls, url: str, keyring: KeyRing, **kw: object) -> Store:
        store = cls(make_engine(url), keyring, **kw)  # type: ignore[arg-type]
        store.create_schema()
        return store

    def create_schema(self) -> None:
        S.metadata.create_all(self.engine)
        with self._write() as c:
            row = c.execute(select(S.meta.c.value).where(S.meta.c.name == "schema_version")).first()
            if row is None:
                c.execute(insert(S.meta).values(name="schema_version", value=str(S.SCHEMA_VERSION)))
            elif int(row[0]) > S.SCHEMA_VERSION:
                raise RuntimeError(f"database schema {row[0]} is newer than this secretsd ({S.SCHEMA_VERSION})")

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions --------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self._write_lock is None:
            with self.engine.connect().execution_options(secretsd_write=True) as conn, conn.begin():
                yield conn
            return
        with self._write_lock, self.engine.connect().execution_options(secretsd_write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def _write_relaxed(self) -> Iterator[Connection]:
        """A write whose commit need not be durable: SQLite ``synchronous=NORMAL`` for this commit only.

        Only for changes whose loss in a power cut is harmless: clearing pending
        marks (a lost clear costs one extra folder rewrite at startup). WAL
        keeps order, so the next FULL commit's fsync covers these frames too;
        every other commit stays FULL. Saves one fsync (~1 ms of kernel CPU).
        """
        if self._write_lock is None:
            with self._write() as c:
                yield c
            return
        with self._write_lock, self.engine.connect().execution_options(secretsd_write=True) as conn:
            raw = conn.connection.driver_connection
            raw.execute("PRAGMA synchronous=NORMAL")  # not allowed inside a transaction: before BEGIN
            try:
                with conn.begin():
                    yield conn
            finally:
                try:
                    raw.execute("PRAGMA synchronous=FULL")
                except BaseException:
                    conn.invalidate()  # never hand a relaxed connection back to the pool
                    raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    def _retrying(self, fn: Callable[[Connection], object]) -> object:
        """Run ``fn`` in a write transaction, retrying when another writer won a race on a key."""
        for attempt in range(_RETRIES):
            try:
                with self._write() as c:
                    return fn(c)
            except IntegrityError:
                if attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # -- workspaces ----------------------------------------------------------

    def create_workspace(self, ws_id: str, template: str | None, env: Mapping[str, str], *, actor: str) -> Workspace:
        blob, kv = self.keyring.encrypt(json.dumps(dict(env)).encode(), _env_aad(ws_id))
        now = self.clock()
        names = sorted(env)

        def tx(c: Connection) -> Workspace:
            if c.execute(select(S.workspaces.c.id).where(S.workspaces.c.id == ws_id)).first():
                raise AlreadyExists("workspace", ws_id)
            c.execute(
                insert(S.workspaces).values(
                    id=ws_id, template=template, env_blob=blob, env_names=json.dumps(names),
                    key_version=kv, encryption_version=ENC_AES_GCM, created_at=now,
                )
            )
            self._audit(c, actor, "workspace.create", ws_id, None, None, None)
            return Workspace(ws_id, template, names, now)

        try:
            return self._retrying(tx)  # type: ignore[return-value]
        except IntegrityError:
            raise AlreadyExists("workspace", ws_id) from None

    def get_workspace(self, ws_id: str) -> Workspace:
        with self._read() as c:
            row = c.execute(select(S.workspaces).where(S.workspaces.c.id == ws_id)).first()
        if row is None:
            raise NotFound("workspace", ws_id)
        return Workspace(row.id, row.template, json.loads(row.env_names), row.created_at)

    def list_workspaces(self) -> list[Workspace]:
        with self._read() as c:
            rows = c.execute(select(S.workspaces).order_by(S.workspaces.c.id)).all()
        return [Workspace(r.id, r.template, json.loads(r.env_names), r.created_at) for r in rows]

    def workspace_env(self, ws_id: str) -> dict[str, str]:
        """The create-time environment snapshot (for the runtime; never served over HTTP)."""
        with self._read() as c:
            row = c.execute(select(S.workspaces).where(S.workspaces.c.id == ws_id)).first()
        if row is None:
            raise NotFound("workspace", ws_id)
        return json.loads(self.keyring.decrypt(row.env_blob, _env_aad(ws_id), row.key_version))

    def delete_workspace(self, ws_id: str, *, actor: str) -> None:
        with self._write() as c:
            if not c.execute(select(S.workspaces.c.id).where(S.workspaces.c.id == ws_id)).first():
                raise NotFound("workspace", ws_id)
            for table in (S.secret_versions, S.secrets):
                c.execute(delete(table).where(table.c.owner == ws_id))
            c.execute(delete(S.pending).where(S.pending.c.workspace == ws_id))
            c.execute(delete(S.workspaces).where(S.workspaces.c.id == ws_id))
            self._audit(c, actor, "workspace.delete", ws_id, None, None, None)

    # -- secrets: changes ----------------------------------------------------

    def put(
        self,
        owner: str,
        values: Mapping[str, bytes],
        *,
        actor: str,
        expected: Mapping[str, int] | None = None,
        action: str = "set",
        idempotency: tuple[str, str, str, Callable[[Change], tuple[int, str]]] | None = None,
        fits: Callable[[str, dict[str, int]], None] | None = None,
    ) -> Change:
        """Store a new version of every key, atomically.

        ``expected`` maps names to the version the caller last saw (0 = absent):
        any mismatch raises VersionConflict and nothing is stored.
        ``idempotency`` = (key, scope, request sha, answer(change) -> (status, body))
        records the answer in the same transaction. ``fits`` gets the owner and the sizes of
        the workspace's folder after the change ({name: value bytes}) and may
        raise to refuse it (a budget), inside the transaction.
        """
        if not values:
            raise ValueError("empty change")
        # Encrypt outside the transaction? The version is in the AAD, so it is
        # only known inside; AES-GCM is microseconds, so do it there.
        return self._retrying(lambda c: self._put(c, owner, values, actor, expected, action, idempotency, fits))  # type: ignore[return-value]

    def put_many(
        self,
        owner: str,
        requests: list[PutRequest],
        *,
        fits: Callable[[str, dict[str, int]], None] | None = None,
    ) -> list[Change | Exception]:
        """Several independent puts to one owner in ONE transaction (group commit).

        Each runs in its own savepoint, in order: one refused request (version
        conflict, budget, ...) returns its exception and leaves the others.
        """
        if len(requests) == 1:  # no savepoint needed: the transaction is the request
            req = requests[0]
            try:
                with self._write() as c:
                    return [self._put(c, owner, req.values, req.actor, req.expected, "set", req.idempotency, fits)]
            except Exception as exc:  # noqa: BLE001 - handed back to the caller
                return [exc]
        out: list[Change | Exception] = []
        with self._write() as c:
            cur = self._fast.cursor(c)
            for req in requests:
                try:
                    with self._fast.savepoint(c, cur):
                        out.append(self._put(c, owner, req.values, req.actor, req.expected, "set", req.idempotency,
                                             fits, cur=cur))
                except Exception as exc:  # noqa: BLE001 - handed back to that request's caller
                    out.append(exc)
        return out

    def put_groups(
        self,
        groups: list[tuple[str, list[PutRequest]]],
        *,
        fits: Callable[[str, dict[str, int]], None] | None = None,
    ) -> list[list[Change | Exception]]:
        """``put_many`` for several owners in ONE transaction (group commit across workspaces).

        One durable commit (one WAL fsync, ~1 ms of kernel CPU here) for every
        push queued meanwhile. Each request runs in its own savepoint: a refused
        one returns its exception and leaves the others. If the commit itself
        fails, every request fails with that error (nothing was stored).
        """
        if sum(len(reqs) for _, reqs in groups) == 1:
            owner, reqs = groups[0]
            return [self.put_many(owner, reqs, fits=fits)]
        out: list[list[Change | Exception]] = []
        with self._write() as c:
            cur = self._fast.cursor(c)
            for owner, reqs in groups:
                res: list[Change | Exception] = []
                for req in reqs:
                    try:
                        with self._fast.savepoint(c, cur):
                            res.append(self._put(c, owner, req.values, req.actor, req.expected, "set",
                                                 req.idempotency, fits, cur=cur))
                    except Exception as exc:  # noqa: BLE001 - handed back to that request's caller
                        res.append(exc)
                out.append(res)
        return out

    def _put(
        self,
        c: Connection,
        owner: str,
        values: Mapping[str, bytes],
        actor: str,
        expected: Mapping[str, int] | None,
        action: str,
        idempotency: tuple[str, str, str, Callable[[Change], tuple[int, str]]] | None,
        fits: Callable[[str, dict[str, int]], None] | None = None,
        *,
        cur: Any = _NO_CURSOR,
    ) -> Change:
        # The hot path: plain SQL on the driver's cursor (see fastpath.py), one
        # executemany per table, pending marks replaced by one upsert.
        fast = self._fast
        if cur is _NO_CURSOR:
            cur = fast.cursor(c)
        names = sorted(values)
        params: dict[str, Any] = {"o": owner}
        for i, n in enumerate(names):
            params[f"n{i}"] = n
        heads = {r[0]: _Head(*r) for r in fast.run(c, cur, fast.heads_sql(len(names)), params)}
        if not heads and owner != GLOBAL:  # a key of this owner exists only while the workspace does
            if not fast.run(c, cur, "owner", {"o": owner}):
                raise NotFound("workspace", owner)
        self._check_expected(heads, expected or {})
        if fits is not None:
            sizes: dict[str, int] = {}
            rows = fast.run(c, cur, "live", {"g": GLOBAL, "o": owner, "f": False})
            for r in sorted(rows, key=lambda r: r[0] != GLOBAL):
                sizes[r[1]] = r[2]
            sizes.update({k: len(v) for k, v in values.items()})
            fits(owner, sizes)
        now = self.clock()
        versions: dict[str, int] = {}
        new_rows, head_new, head_upd, prune, audit = [], [], [], [], []
        for name in names:
            value = values[name]
            head = heads.get(name)
            ver = (head.last_version if head else 0) + 1
            blob, kv = self.keyring.encrypt(value, _aad(owner, name, ver))
            fp = sha8(value)
            new_rows.append(dict(owner=owner, name=name, version=ver, blob=blob, key_version=kv,
                                 encryption_version=ENC_AES_GCM, size=len(value), sha8=fp,
                                 created_at=now, actor=actor, action=action))
            row = dict(owner=owner, name=name, version=ver, last_version=ver, deleted=False, size=len(value),
                       sha8=fp, updated_at=now)
            (head_new if head is None else head_upd).append(row)
            if ver > self.keep_versions:
                prune.append(dict(owner=owner, name=name, upto=ver - self.keep_versions))
            audit.append(dict(at=now, actor=actor, action=action, workspace=owner or None, key=name,
                              version=ver, sha8=fp))
            versions[name] = ver
        fast.many(c, cur, "ins_version", new_rows)
        fast.many(c, cur, "ins_head", head_new)
        fast.many(c, cur, "upd_head", head_upd)
        fast.many(c, cur, "prune", prune)
        fast.many(c, cur, "ins_audit", audit)
        if owner != GLOBAL:
            # Replace the marks: a re-stamped mark is never cleared by an older write.
            marks = [{"workspace": owner, "name": n, "since": now} for n in names]
            if not fast.upsert:
                fast.many(c, cur, "unmark_one", [{"workspace": owner, "name": n} for n in names])
            fast.many(c, cur, "mark", marks)
            change = Change(versions, [owner], now)
        else:
            change = Change(versions, self._mark_pending(c, owner, names, now), now)
        if idempotency:
            key, scope, req_sha, answer = idempotency
            status, body = answer(change)
            fast.run(c, cur, "ins_idem", {"key": key, "scope": scope, "request_sha": req_sha, "status": status,
                                          "body": body, "created_at": now})
        return change

    def delete_secret(self, owner: str, name: str, *, actor: str) -> Change:
        def tx(c: Connection) -> Change:
            self._require_owner(c, owner)
            head = self._heads(c, owner, [name], lock=True).get(name)
            if head is None or head.deleted:
                raise NotFound("secret", name)
            now = self.clock()
            c.execute(update(S.secrets).where(_key(S.secrets, owner, name)).values(deleted=True, updated_at=now))
            self._audit(c, actor, "delete", owner or None, name, head.version, head.sha8)
            return Change({name: head.version}, self._mark_pending(c, owner, [name], now), now)

        return self._retrying(tx)  # type: ignore[return-value]

    def rollback(self, owner: str, name: str, version: int, *, actor: str) -> Change:
        """Write an old version's value as a new version."""

        def tx(c: Connection) -> Change:
            self._require_owner(c, owner)
            row = c.execute(
                select(S.secret_versions).where(
                    _key(S.secret_versions, owner, name), S.secret_versions.c.version == version
                )
            ).first()
            if row is None:
                if not self._heads(c, owner, [name], lock=False):
                    raise NotFound("secret", name)
                raise NotFound(f"version {version} of secret", name)
            value = self.keyring.decrypt(row.blob, _aad(owner, name, version), row.key_version)
            return self._put(c, owner, {name: value}, actor, None, "rollback", None)

        return self._retrying(tx)  # type: ignore[return-value]

    # -- secrets: reads ------------------------------------------------------

    def effective(self, ws_id: str, names: Iterable[str] | None = None) -> dict[str, bytes]:
        """Global ∪ workspace values (workspace wins), optionally restricted to ``names``."""
        wanted = None if names is None else sorted(set(names))
        h, v = S.secrets, S.secret_versions
        q = (
            select(h.c.owner, h.c.name, h.c.version, v.c.blob, v.c.key_version)
            .join(v, and_(v.c.owner == h.c.owner, v.c.name == h.c.name, v.c.version == h.c.version))
            .where(h.c.owner.in_([GLOBAL, ws_id]), h.c.deleted.is_(False))
        )
        if wanted is not None:
            if not wanted:
                return {}
            q = q.where(h.c.name.in_(wanted))
        with self._read() as c:
            rows = c.execute(q).all()
        out: dict[str, bytes] = {}
        # Global first, so the workspace's own value overwrites it.
        for r in sorted(rows, key=lambda r: r.owner != GLOBAL):
            out[r.name] = self.keyring.decrypt(r.blob, _aad(r.owner, r.name, r.version), r.key_version)
        return out

    def list_secrets(self, owner: str, *, inherit: bool = True) -> list[SecretMeta]:
        """Metadata of live keys; for a workspace, global keys it inherits are included."""
        h = S.secrets
        owners = [owner] if owner == GLOBAL or not inherit else [GLOBAL, owner]
        with self._read() as c:
            self._require_owner(c, owner)
            rows = c.execute(_Q_LIVE, {"owners": owners}).all()
        out: dict[str, SecretMeta] = {}
        for r in sorted(rows, key=lambda r: r.owner != GLOBAL):
            scope = "global" if r.owner == GLOBAL else "workspace"
            out[r.name] = SecretMeta(r.name, scope, r.version, r.size, r.sha8, r.updated_at)
        return [out[k] for k in sorted(out)]

    def versions(self, owner: str, name: str) -> list[VersionMeta]:
        with self._read() as c:
            self._require_owner(c, owner)
            head = self._heads(c, owner, [name], lock=False).get(name)
            if head is None:
                raise NotFound("secret", name)
            rows = c.execute(
                select(S.secret_versions)
                .where(_key(S.secret_versions, owner, name))
                .order_by(S.secret_versions.c.version.desc())
            ).all()
        current = 0 if head.deleted else head.version
        return [VersionMeta(r.version, r.size, r.sha8, r.created_at, r.actor, r.action, r.version == current) for r in rows]

    def workspace_ids(self) -> list[str]:
        with self._read() as c:
            return list(c.execute(select(S.workspaces.c.id).order_by(S.workspaces.c.id)).scalars())

    # -- pending marks -------------------------------------------------------

    def pending_for(self, ws_id: str) -> list[str]:
        with self._read() as c:
            return sorted(c.execute(select(S.pending.c.name).where(S.pending.c.workspace == ws_id)).scalars())

    def pending_workspaces(self) -> list[str]:
        with self._read() as c:
            return sorted(set(c.execute(select(S.pending.c.workspace)).scalars()))

    def pending_count(self) -> int:
        with self._read() as c:
            return int(c.execute(select(func.count()).select_from(S.pending)).scalar_one())

    def clear_pending(self, ws_id: str, names: Iterable[str] | None = None, *, upto: float | None = None) -> None:
        """Drop the marks a folder write satisfied: those set at or before ``upto`` (default: now).

        A change committed later re-stamps its marks, so a slow clear never
        drops the mark of a newer change.
        """
        self.clear_pending_many([(ws_id, None if names is None else list(names), upto)])

    def clear_pending_many(self, items: Iterable[tuple[str, list[str] | None, float | None]]) -> None:
        """Several clears in one transaction (the service batches them)."""
        now = self.clock()
        work = [(ws, names, now if upto is None else upto) for ws, names, upto in items if names is None or names]
        if not work:
            return
        whole = [{"ws": ws, "upto": upto} for ws, names, upto in work if names is None]
        some = [{"ws": ws, "name": n, "upto": upto} for ws, names, upto in work if names is not None for n in names]
        with self._write_relaxed() as c:  # marks are a hint: a lost clear is one extra rewrite
            cur = self._fast.cursor(c)
            self._fast.many(c, cur, "clear_all", whole)
            self._fast.many(c, cur, "clear", some)

    # -- idempotency ---------------------------------------------------------

    def idempotent_answer(self, key: str, scope: str) -> IdempotentAnswer | None:
        with self._read() as c:
            row = c.execute(
                select(S.idempotency).where(S.idempotency.c.key == key, S.idempotency.c.scope == scope)
            ).first()
        if row is None or row.created_at < self.clock() - IDEMPOTENCY_TTL:
            return None
        return IdempotentAnswer(row.request_sha, row.status, row.body)

    def record_answer(self, key: str, scope: str, request_sha: str, status: int, body: str) -> None:
        """Record (or replace) the answer for an idempotency key; also drop expired ones."""
        now = self.clock()
        tbl = S.idempotency
        with self._write() as c:
            c.execute(delete(tbl).where(tbl.c.created_at < now - IDEMPOTENCY_TTL))
            c.execute(delete(tbl).where(tbl.c.key == key, tbl.c.scope == scope))
            c.execute(insert(tbl).values(key=key, scope=scope, request_sha=request_sha, status=status, body=body, created_at=now))

    # -- audit ---------------------------------------------------------------

    def audit_events(
        self, *, workspace: str | None = None, key: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[AuditEvent]:
        a = S.audit
        q = select(a).order_by(a.c.id.desc()).limit(limit)
        if workspace is not None:
            q = q.where(a.c.workspace == workspace)
        if key is not None:
            q = q.where(a.c.key == key)
        if before is not None:
            q = q.where(a.c.id < before)
        with self._read() as c:
            rows = c.execute(q).all()
        return [AuditEvent(r.id, r.at, r.actor, r.action, r.workspace, r.key, r.version, r.sha8) for r in rows]

    def record_event(self, actor: str, action: str, workspace: str | None = None) -> None:
        """An audit row for an action that changes no stored value (e.g. a restart)."""
        with self._write() as c:
            self._audit(c, actor, action, workspace, None, None, None)

    # -- key rotation --------------------------------------------------------

    def reencrypt(self, batch: int = 500) -> int:
        """Re-encrypt every row not under the key ring's current key; returns rows rewritten."""
        kr = self.keyring
        done = 0
        v = S.secret_versions
        while True:
            with self._write() as c:
                rows = c.execute(select(v).where(v.c.key_version != kr.current).limit(batch)).all()
                for r in rows:
                    aad = _aad(r.owner, r.name, r.version)
                    blob, kv = kr.encrypt(kr.decrypt(r.blob, aad, r.key_version), aad)
                    c.execute(
                        update(v).where(_key(v, r.owner, r.name), v.c.version == r.version)
                        .values(blob=blob, key_version=kv, encryption_version=ENC_AES_GCM)
                    )
            done += len(rows)
            if len(rows) < batch:
                break
        w = S.workspaces
        with self._write() as c:
            for r in c.execute(select(w).where(w.c.key_version != kr.current)).all():
                blob, kv = kr.encrypt(kr.decrypt(r.env_blob, _env_aad(r.id), r.key_version), _env_aad(r.id))
                c.execute(update(w).where(w.c.id == r.id).values(env_blob=blob, key_version=kv))
                done += 1
        return done

    def check_keys(self) -> None:
        """Decrypt one stored row per key version in use: raises KeyRingError
        when the key ring is not the one the rows were written with (a
        server started with a wrong key would otherwise store new values
        under it, next to rows nothing can read any more)."""
        kinds = [  # (table, its ciphertext, its AAD)
            (S.secret_versions, lambda r: r.blob, lambda r: _aad(r.owner, r.name, r.version)),
            (S.workspaces, lambda r: r.env_blob, lambda r: _env_aad(r.id)),
        ]
        with self._read() as c:
            for table, blob, aad in kinds:
                for kv in list(c.execute(select(table.c.key_version).distinct()).scalars()):
                    r = c.execute(select(table).where(table.c.key_version == kv).limit(1)).one()
                    if blob(r) is not None:
                        self.keyring.decrypt(blob(r), aad(r), kv)

    def key_versions_in_use(self) -> set[int]:
        with self._read() as c:
            a = set(c.execute(select(S.secret_versions.c.key_version).distinct()).scalars())
            b = set(c.execute(select(S.workspaces.c.key_version).distinct()).scalars())
        return a | b

    # -- helpers -------------------------------------------------------------

    def _require_owner(self, c: Connection, owner: str) -> None:
        if owner != GLOBAL and c.execute(_Q_OWNER, {"o": owner}).first() is None:
            raise NotFound("workspace", owner)

    def _heads(self, c: Connection, owner: str, names: list[str], *, lock: bool) -> dict:
        q = _Q_HEADS_LOCK if lock else _Q_HEADS
        return {r.name: r for r in c.execute(q, {"o": owner, "names": list(names)}).all()}

    @staticmethod
    def _check_expected(heads: dict, expected: Mapping[str, int]) -> None:
        conflicts: dict[str, tuple[int, int]] = {}
        for name, want in expected.items():
            head = heads.get(name)
            have = 0 if head is None or head.deleted else head.version
            if have != want:
                conflicts[name] = (want, have)
        if conflicts:
            raise VersionConflict(conflicts)

    def _mark_pending(self, c: Connection, owner: str, names: list[str], now: float) -> list[str]:
        """Mark every workspace folder this change touches; return those workspaces."""
        if owner != GLOBAL:
            targets = {owner: names}
        else:
            # A global key reaches the workspaces that do not override it.
            overriding = c.execute(
                select(S.secrets.c.owner, S.secrets.c.name).where(
                    S.secrets.c.owner != GLOBAL, S.secrets.c.name.in_(names), S.secrets.c.deleted.is_(False)
                )
            ).all()
            own = {(r.owner, r.name) for r in overriding}
            targets = {}
            for ws in c.execute(select(S.workspaces.c.id)).scalars():
                hit = [n for n in names if (ws, n) not in own]
                if hit:
                    targets[ws] = hit
        if not targets:
            return []
        if owner != GLOBAL:
            # Replace the marks: a re-stamped mark is never cleared by an older write.
            c.execute(_DEL_PENDING, {"ws": owner, "names": names, "upto": 1e18})
            c.execute(_INS_PENDING, [{"workspace": owner, "name": n, "since": now} for n in names])
            return [owner]
        existing = {(r.workspace, r.name) for r in c.execute(_Q_PENDING, {"ws": list(targets), "names": names}).all()}
        if existing:
            c.execute(_UPD_PENDING, [{"b_ws": w, "b_name": n, "b_since": now} for w, n in sorted(existing)])
        rows = [
            {"workspace": ws, "name": n, "since": now}
            for ws, ns in targets.items()
            for n in ns
            if (ws, n) not in existing
        ]
        if rows:
            c.execute(_INS_PENDING, rows)
        return sorted(targets)

    def _audit(
        self, c: Connection, actor: str, action: str, ws: str | None, key: str | None, version: int | None, fp: str | None
    ) -> None:
        c.execute(
            insert(S.audit).values(
                at=self.clock(), actor=actor, action=action, workspace=ws, key=key, version=version, sha8=fp
            )
        )


def _key(table, owner: str, name: str):  # type: ignore[no-untyped-def]
    return and_(table.c.owner == owner, table.c.name == name)
