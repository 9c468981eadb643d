"""The StatusFeed role (broker.tokens.stores.changes) against memory, SQLite and PostgreSQL:
"which grants changed status since my cursor?", the question every replica asks to drop cached
tokens of grants revoked elsewhere. Plus the PostgreSQL case a sequence would get wrong: a status
change committed after a later one was already read is still reported."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from broker.errors import InvalidArgument
from broker.keys.soft import SoftSealer
from broker.tokens.model import GrantStatus
from broker.tokens.stores.changes import StatusChange, StatusFeed
from broker.tokens.stores.memory import MemoryGrantStore
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.parallel import unique_name
from tests.tokens.test_store_contract import drop_pg_schema, make_grant, postgres_dsn_or_skip


class Store(StatusFeed):  # what these tests use of a store (a type only)
    async def create(self, grant: Any) -> None: ...
    async def set_status(
        self, grant_id: str, status: GrantStatus, *, reason: str | None
    ) -> Any: ...
    async def record_error(self, grant_id: str, reason: str) -> None: ...
    async def delete(self, grant_id: str) -> None: ...


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Store]:
    clock, sealer = FakeClock(), SoftSealer()
    if request.param == "memory":
        memory = MemoryGrantStore(clock)
        yield memory  # type: ignore[misc]
        await memory.close()
    elif request.param == "sqlite":
        lite = await SqliteGrantStore.connect(str(tmp_path / "grants.db"), sealer, clock)
        yield lite  # type: ignore[misc]
        await lite.close()
    else:
        dsn = postgres_dsn_or_skip()
        schema = unique_name("test_changes")
        pg = await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema)
        try:
            yield pg  # type: ignore[misc]
        finally:
            await pg.close()
            drop_pg_schema(dsn, schema)


async def test_a_status_change_is_reported_once_past_its_cursor(store: Store) -> None:
    for gid in ("g-1", "g-2", "g-3"):
        await store.create(make_grant(gid))
    start = await store.status_changes(0)
    assert start.changes == ()  # created ACTIVE: no change yet
    await store.set_status("g-2", GrantStatus.REVOKED, reason="revoked")
    await store.record_error("g-1", "as_unavailable")  # not a status change
    seen = await store.status_changes(start.cursor)
    assert seen.changes == (StatusChange("g-2", GrantStatus.REVOKED),)
    quiet = await store.status_changes(seen.cursor)
    assert quiet.changes == ()
    await store.set_status("g-3", GrantStatus.REAUTHORIZATION_REQUIRED, reason="invalid_grant")
    await store.set_status("g-2", GrantStatus.REVOKED, reason="again")  # same status: no change
    later = await store.status_changes(quiet.cursor)
    assert later.changes == (StatusChange("g-3", GrantStatus.REAUTHORIZATION_REQUIRED),)
    assert set((await store.status_changes(0)).changes) == {
        StatusChange("g-2", GrantStatus.REVOKED),
        StatusChange("g-3", GrantStatus.REAUTHORIZATION_REQUIRED),
    }


async def test_a_deleted_grant_is_not_reported_and_numbers_are_not_reused(store: Store) -> None:
    await store.create(make_grant("g-1"))
    await store.create(make_grant("g-2"))
    await store.set_status("g-1", GrantStatus.REVOKED, reason="revoked")
    cursor = (await store.status_changes(0)).cursor
    await store.delete("g-1")
    await store.set_status("g-2", GrantStatus.REVOKED, reason="revoked")
    assert (await store.status_changes(cursor)).changes == (
        StatusChange("g-2", GrantStatus.REVOKED),
    )


async def test_a_bad_cursor_is_refused(store: Store) -> None:
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(InvalidArgument):
            await store.status_changes(bad)  # type: ignore[arg-type]


async def test_postgres_a_change_committed_after_a_later_one_was_read_is_reported(
    tmp_path: Any,
) -> None:
    """Transaction ids are taken in start order, not commit order: T1 changes g-1 and stays
    open, T2 changes g-2 and commits, a reader sees g-2; T1 commits: the next read reports g-1."""
    dsn = postgres_dsn_or_skip()
    schema = unique_name("test_changes")
    store = await PostgresGrantStore.connect(dsn, SoftSealer(), FakeClock(), schema=schema)
    try:
        await store.create(make_grant("g-1"))
        await store.create(make_grant("g-2"))
        cursor = (await store.status_changes(0)).cursor
        table = sql.SQL("{}.grants").format(sql.Identifier(schema))
        update = sql.SQL("UPDATE {} SET status = 'revoked' WHERE grant_id = %s").format(table)
        async with await psycopg.AsyncConnection.connect(dsn) as t1:
            await t1.execute(update, ("g-1",))  # T1: its id is older than T2's, still open
            await store.set_status("g-2", GrantStatus.REVOKED, reason="revoked")  # T2 commits
            first = await store.status_changes(cursor)
            assert first.changes == (StatusChange("g-2", GrantStatus.REVOKED),)
            await t1.commit()
        second = await store.status_changes(first.cursor)
        assert StatusChange("g-1", GrantStatus.REVOKED) in second.changes
        assert (await store.status_changes(second.cursor)).changes == ()
    finally:
        await store.close()
        drop_pg_schema(dsn, schema)
