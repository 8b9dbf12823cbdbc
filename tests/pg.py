"""PostgreSQL for tests: the server TEST_DATABASE_URL names, a fresh schema per test.

    from tests.pg import fresh_schema_url

    with fresh_schema_url() as url:  # postgresql://...?options=-csearch_path%3Dtq_...
        storage = open_storage(Config(database_url=url))

A server that cannot be reached skips the test with one line saying what to set, or,
when CI is set (CI sets CI=true), fails it: CI must never pass by skipping PostgreSQL.
Only schemas this module created are ever dropped; nothing else on the server changes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT_S = 5

_unreachable: dict[str, str] = {}  # url -> why, so later tests do not wait again


def server_url() -> str:
    return os.environ.get("TEST_DATABASE_URL") or DEFAULT_URL


def connect(url: str | None = None) -> psycopg.Connection:
    """An autocommit connection to the test server, or the test is skipped (failed on CI)."""
    url = url or server_url()
    if url not in _unreachable:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            _unreachable[url] = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    unreachable(url, _unreachable[url])
    raise AssertionError("unreachable")  # unreachable() never returns


def unreachable(url: str, why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(
            f"PostgreSQL at {url} cannot be reached ({why}); CI is set, so PostgreSQL "
            "tests must run: start the server or point TEST_DATABASE_URL at one",
            pytrace=False,
        )
    pytest.skip(f"PostgreSQL unreachable ({why}): set TEST_DATABASE_URL=postgresql://...")


def with_search_path(url: str, schema: str) -> str:
    """`url` whose connections use `schema` (libpq's options, percent-encoded)."""
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_schema_url(url: str | None = None) -> Iterator[str]:
    """Create a schema of its own, yield a URL that uses it, drop it (and all in it)
    afterwards. Whoever used the URL must have closed their connections by then."""
    url = url or server_url()
    schema = f"tq_test_{uuid.uuid4().hex[:16]}"
    with connect(url) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(url, schema)
    finally:
        with connect(url) as admin:
            # a connection the test left open would make DROP wait: fail instead
            admin.execute("SET lock_timeout = '10s'")
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
