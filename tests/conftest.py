"""Fixtures shared by several suites: a real PostgreSQL cluster (started once
per session from the Debian binaries, torn down at the end)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from store.pgserver import PgCluster, shared_cluster, unavailable_reason


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with shared_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.drop_database(name)
