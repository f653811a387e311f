"""Database URLs on the command line (``serve --db``, ``rotate-key --db``):
one-line errors, never a traceback, never the password.

A URL that cannot be parsed, names an unknown dialect or a driver that is not
installed is a usage error (:class:`BadDbUrl`, exit 2). A database that cannot
be reached or opened is a runtime failure (:func:`failure_message`, exit 1).
"""

from __future__ import annotations

import os

from sqlalchemy.engine import URL, make_url

from secretsd.store.engine import DB_ENV


class BadDbUrl(Exception):
    """The URL itself is wrong. The message shows it with the password masked."""


def safe_url(url: str | URL) -> str:
    """The URL for messages: password masked; only the scheme when it does not parse."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
        return parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - whatever it is, show no more than the scheme
        text = str(url)
        return text.split("://", 1)[0] + "://..." if "://" in text else "<unparsable URL>"


def check_url(url: str, label: str = "--db") -> URL:
    """Parse ``url`` and load its dialect and driver, without connecting.
    ``label`` says where the URL came from (``--db``, ``$SECRETSD_DB``)."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - ArgumentError, ValueError (bad port) ...
        raise BadDbUrl(f"{label} {safe_url(url)}: not a valid SQLAlchemy URL "
                       "(e.g. sqlite:////path/secretsd.db or postgresql://user@host/db)") from None
    try:
        dialect = parsed.get_dialect()
    except Exception:  # noqa: BLE001 - NoSuchModuleError
        raise BadDbUrl(f"{label} {safe_url(parsed)}: unsupported database {parsed.drivername!r} "
                       "(SQLite and PostgreSQL are supported)") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise BadDbUrl(f"{label} {safe_url(parsed)}: the {parsed.drivername!r} driver is not installed "
                       f"({exc.name or 'module'} missing)") from None
    return parsed


def given_url(db_url: str | None) -> str | None:
    """The URL from ``--db``, else ``$SECRETSD_DB``, else None (the default
    SQLite in the data folder), checked by :func:`check_url`."""
    url = db_url or os.environ.get(DB_ENV) or None
    if url:
        check_url(url, "--db" if db_url else f"${DB_ENV}")
    return url


def failure_message(exc: BaseException, url: str) -> str:
    """One line saying why the database at ``url`` could not be used, with
    neither the password nor any statement parameter in it."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    if isinstance(exc, DBAPIError) and exc.orig is not None:
        reason = str(exc.orig)
    elif isinstance(exc, SQLAlchemyError):
        reason = type(exc).__name__
    elif isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        if exc.filename:
            reason = f"{exc.filename}: {reason}"
    else:
        reason = str(exc) or type(exc).__name__
    reason = " ".join(reason.split())  # libpq's messages span lines
    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001
        password = None
    if password:
        reason = reason.replace(str(password), "***")
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return f"cannot open the database {safe_url(url)}: {reason}"
