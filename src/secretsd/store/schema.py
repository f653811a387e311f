"""Tables (SQLAlchemy Core). Created at startup with ``metadata.create_all``.

``owner`` is the workspace id, or ``""`` for global scope (workspace ids are
never empty). Values only ever appear encrypted, in ``blob`` columns.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

GLOBAL = ""
SCHEMA_VERSION = 1

metadata = MetaData()

meta = Table(
    "secretsd_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)

workspaces = Table(
    "workspaces",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("template", String(1024), nullable=True),
    # The create-time environment snapshot: kept apart from secrets, encrypted too.
    Column("env_blob", LargeBinary, nullable=False),
    Column("env_names", Text, nullable=False),  # JSON list of names
    Column("key_version", Integer, nullable=False),
    Column("encryption_version", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

# The head of each key: current version and the highest version ever used,
# so numbering stays monotonic across deletes.
secrets = Table(
    "secrets",
    metadata,
    Column("owner", String(128), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("last_version", Integer, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("size", Integer, nullable=False),
    Column("sha8", String(8), nullable=False),
    Column("updated_at", Float, nullable=False),
)

secret_versions = Table(
    "secret_versions",
    metadata,
    Column("owner", String(128), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("blob", LargeBinary, nullable=False),
    Column("key_version", Integer, nullable=False),
    Column("encryption_version", Integer, nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha8", String(8), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(16), nullable=False),
)

# Workspace keys whose folder may lag the store: set in the same transaction
# as the change, cleared once the folder is written.
pending = Table(
    "pending",
    metadata,
    Column("workspace", String(128), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("since", Float, nullable=False),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("scope", String(512), primary_key=True),  # method + route + actor
    Column("request_sha", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("body", Text, nullable=False),  # the JSON answer (never holds values)
    Column("created_at", Float, nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("workspace", String(128), nullable=True),
    Column("key", String(255), nullable=True),
    Column("version", Integer, nullable=True),
    Column("sha8", String(8), nullable=True),
)
Index("audit_ws_key", audit.c.workspace, audit.c.key)
