"""``secretsd rotate-key``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from secretsd.store import schema as S
from secretsd.store.crypto import KEY_ENV, KEY_FILE_NAME, KeyRing, KeyRingError
from secretsd.store.dburl import BadDbUrl, failure_message, given_url, safe_url
from secretsd.store.engine import DB_ENV, default_url
from secretsd.store.rotation import rotate
from secretsd.store.store import Store


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _require_store(data_dir: Path, url: str) -> None:
    """Exit 1, saying what is missing, unless ``url`` holds a secretsd store
    and its key is at hand (``$SECRETSD_ENCRYPTION_KEY`` or DATA/encryption.key)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if not db or db == ":memory:" or not Path(db).is_file():
            _fail(f"no store to rotate in {data_dir}: {db or ':memory:'} does not exist "
                  "(pass the control plane's --data, or --db)")
    else:
        try:
            engine = create_engine(url, hide_parameters=True)
            try:
                found = inspect(engine).has_table(S.meta.name)
            finally:
                engine.dispose()
        except SQLAlchemyError as exc:
            _fail(failure_message(exc, url))
        if not found:
            _fail(f"no secretsd store in {safe_url(url)} (no {S.meta.name} table)")
    if not os.environ.get(KEY_ENV) and not (data_dir / KEY_FILE_NAME).is_file():
        _fail(f"no encryption key in {data_dir}: {data_dir / KEY_FILE_NAME} does not exist and "
              f"${KEY_ENV} is not set (pass the control plane's --data)")


@click.command("rotate-key")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("./var"),
              show_default=True, help="Data folder (holds encryption.key and, by default, the database).")
@click.option("--db", "db_url", default=None, help=f"SQLAlchemy URL (default: ${DB_ENV} or SQLite in --data).")
def rotate_key(data_dir: Path, db_url: str | None) -> None:
    """Re-encrypt every stored value under a new AES-256-GCM key.

    With a key file (DATA/encryption.key) a new key is generated and the old
    ones are dropped once no row uses them. With SECRETSD_ENCRYPTION_KEY set,
    put the new key in it as the highest version first ("1:OLD,2:NEW"); rows
    are moved to it and you may then drop the old version from the variable.
    """
    try:
        given = given_url(db_url)
    except BadDbUrl as exc:
        _fail(str(exc), 2)
    url = given or default_url(data_dir)
    # Rotate an existing store only: never create a database or a key here
    # (a wrong --data used to "rotate" a brand-new empty store and report success).
    _require_store(data_dir, url)
    try:
        store = Store.open(url, KeyRing.load(data_dir))
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from None
    except (SQLAlchemyError, OSError, RuntimeError) as exc:
        _fail(failure_message(exc, url))
    try:
        rep = rotate(store)
    except (SQLAlchemyError, OSError) as exc:
        _fail(failure_message(exc, url))
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"current key version: {rep.new_version}; rows re-encrypted: {rep.rewritten}")
    if rep.retired:
        click.echo(f"retired key versions: {', '.join(map(str, rep.retired))}")
    if rep.still_in_use:
        raise click.ClickException(
            f"rows still use key versions {rep.still_in_use}; run rotate-key again (is a writer racing?)"
        )


commands = [rotate_key]
