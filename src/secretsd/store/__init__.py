"""Durable, encrypted, versioned secrets store (SQLAlchemy). Imports nothing from the control plane."""

from secretsd.store.crypto import KeyRing, KeyRingError
from secretsd.store.errors import AlreadyExists, NotFound, StoreError, VersionConflict
from secretsd.store.models import AuditEvent, Change, SecretMeta, VersionMeta, Workspace
from secretsd.store.store import GLOBAL, Store

__all__ = [
    "GLOBAL", "AlreadyExists", "AuditEvent", "Change", "KeyRing", "KeyRingError", "NotFound",
    "SecretMeta", "Store", "StoreError", "VersionConflict", "VersionMeta", "Workspace",
]
