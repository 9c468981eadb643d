"""End-to-end fixtures. The stacks themselves (the ``stacks`` fixture, ``login``, ``get_token``,
...) are shared with the chaos suite: :mod:`tests.stacks`. Here: ``pg_schema``, a fresh
PostgreSQL schema for the replicas of one test (skipped without a local PostgreSQL), dropped
afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.tokens.test_store_contract import drop_pg_schema, postgres_dsn_or_skip


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """(dsn, schema name) of a schema no other test uses."""
    dsn = postgres_dsn_or_skip()
    schema = f"e2e_{time.time_ns():x}"
    try:
        yield dsn, schema
    finally:
        drop_pg_schema(dsn, schema)
