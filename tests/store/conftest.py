"""Store fixtures: a database URL per test, SQLite and (when installed) a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest



@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'secretsd.db'}"
    return str(request.getfixturevalue("pg_url"))
