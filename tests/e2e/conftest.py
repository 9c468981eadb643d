"""End-to-end fixtures. The stacks themselves (the ``stacks`` fixture, ``login``, ``get_token``,
...) are shared with the chaos suite: :mod:`tests.stacks`. Here: ``pg_schema``, a fresh
PostgreSQL schema for the replicas of one test (skipped without a local PostgreSQL), dropped
afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.parallel import unique_name
from tests.tokens.stores.helpers import drop_pg_schema, postgres_dsn_or_skip


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """(dsn, schema name) of a schema no other test, xdist worker or concurrent run uses."""
    dsn = postgres_dsn_or_skip()
    schema = unique_name("e2e")
    try:
        yield dsn, schema
    finally:
        drop_pg_schema(dsn, schema)
