"""Fixtures for tests that start real processes (see harness.py)."""

from __future__ import annotations

import pytest
from harness import Cluster

from tests.pg import fresh_schema_url


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


@pytest.fixture
def make_cluster(tmp_path):
    """A factory for a cluster with its own settings: make_cluster(LEASE_SECONDS="60")."""
    made: list[Cluster] = []

    def make(**settings: str) -> Cluster:
        c = Cluster(tmp_path / f"cluster-{len(made)}", **settings)
        c.tmp.mkdir(parents=True, exist_ok=True)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request):
    """A cluster's database settings on each backend: {} for its own SQLite file, or
    the DATABASE_URL of a fresh PostgreSQL schema (a test module may define its own)."""
    if request.param == "sqlite":
        yield {}
    else:
        with fresh_schema_url() as url:
            yield {"DATABASE_URL": url}
