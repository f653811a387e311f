"""``secretsd rotate-key``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from secretsd.store.crypto import KeyRing, KeyRingError
from secretsd.store.engine import DB_ENV, default_url
from secretsd.store.rotation import rotate
from secretsd.store.store import Store


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
    url = db_url or os.environ.get(DB_ENV) or default_url(data_dir)
    try:
        store = Store.open(url, KeyRing.load(data_dir))
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        rep = rotate(store)
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
