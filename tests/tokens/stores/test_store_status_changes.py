"""The StatusFeed role (broker.tokens.stores.changes) against memory, SQLite and PostgreSQL:
"which grants changed status since my cursor?", the question every replica asks to drop cached
tokens of grants revoked elsewhere. Plus the PostgreSQL case a sequence would get wrong: a status
change committed after a later one was already read is still reported.

On PostgreSQL the cursor is a transaction-id horizon (the reading snapshot's xmin), which is
cluster-wide: while any older transaction on the server is open (another test run, another
application), changes already read are reported again. That is the feed's contract (at least
once; re-applying a status is idempotent), so these tests do not assume an idle server: the
PostgreSQL flavour accepts a change read before being reported again, never a grant that did not
change, and the ``postgres-busy`` flavour holds an older transaction open in another connection
for the whole test, so the re-delivery happens every time and is asserted exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Set
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
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
from tests.tokens.stores.helpers import (
    drop_pg_schema,
    make_grant,
    older_transaction_open,
    postgres_dsn_or_skip,
)


class Store(StatusFeed):  # what these tests use of a store (a type only)
    async def create(self, grant: Any) -> None: ...
    async def set_status(
        self, grant_id: str, status: GrantStatus, *, reason: str | None
    ) -> Any: ...
    async def record_error(self, grant_id: str, reason: str) -> None: ...
    async def delete(self, grant_id: str) -> None: ...


@dataclass(frozen=True)
class Feed:
    store: Store
    repeats: str  # "never" (exactly once), "may" (at least once), "always" (an older xact open)

    async def read(
        self, cursor: int, *, new: Set[StatusChange], seen: Set[StatusChange] = frozenset()
    ) -> int:
        """Reads past ``cursor``: every change in ``new`` is reported, and nothing but those and
        the changes already ``seen`` (reported before); returns the next cursor."""
        batch = await self.store.status_changes(cursor)
        got = set(batch.changes)
        assert len(got) == len(batch.changes), batch.changes  # a grant once per batch
        if self.repeats == "never":
            assert got == new
        elif self.repeats == "always":
            assert got == new | seen
        else:
            assert new <= got <= new | seen
        assert batch.cursor >= cursor
        return batch.cursor


@pytest.fixture(params=["memory", "sqlite", "postgres", "postgres-busy"])
async def feed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Feed]:
    kind: str = request.param
    async with open_store(kind.removesuffix("-busy"), tmp_path) as store:
        if kind == "postgres-busy":
            async with older_transaction_open(postgres_dsn_or_skip()):
                yield Feed(store, "always")
        else:
            yield Feed(store, "may" if kind == "postgres" else "never")


@asynccontextmanager
async def open_store(kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    clock, sealer = FakeClock(), SoftSealer()
    if kind == "memory":
        memory = MemoryGrantStore(clock)
        yield memory  # type: ignore[misc]
        await memory.close()
    elif kind == "sqlite":
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


async def test_a_status_change_is_reported_once_past_its_cursor(feed: Feed) -> None:
    store = feed.store
    for gid in ("g-1", "g-2", "g-3", "g-4"):
        await store.create(make_grant(gid))
    cursor = await feed.read(0, new=set())  # created ACTIVE: no change yet
    g2 = StatusChange("g-2", GrantStatus.REVOKED)
    await store.set_status("g-2", GrantStatus.REVOKED, reason="revoked")
    await store.record_error("g-1", "as_unavailable")  # not a status change
    await store.set_status("g-4", GrantStatus.ACTIVE, reason=None)  # same status: no change
    cursor = await feed.read(cursor, new={g2})
    cursor = await feed.read(cursor, new=set(), seen={g2})
    g3 = StatusChange("g-3", GrantStatus.REAUTHORIZATION_REQUIRED)
    await store.set_status("g-3", g3.status, reason="invalid_grant")
    await store.set_status("g-2", GrantStatus.REVOKED, reason="again")  # same status: no change
    await feed.read(cursor, new={g3}, seen={g2})
    assert set((await store.status_changes(0)).changes) == {g2, g3}


async def test_a_deleted_grant_is_not_reported_and_numbers_are_not_reused(feed: Feed) -> None:
    store = feed.store
    await store.create(make_grant("g-1"))
    await store.create(make_grant("g-2"))
    await store.set_status("g-1", GrantStatus.REVOKED, reason="revoked")
    cursor = (await store.status_changes(0)).cursor
    await store.delete("g-1")
    await store.set_status("g-2", GrantStatus.REVOKED, reason="revoked")
    await feed.read(cursor, new={StatusChange("g-2", GrantStatus.REVOKED)})


async def test_a_bad_cursor_is_refused(feed: Feed) -> None:
    store = feed.store
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(InvalidArgument):
            await store.status_changes(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
async def test_postgres_a_change_committed_after_a_later_one_was_read_is_reported(
    tmp_path: Path, busy: bool
) -> None:
    """Transaction ids are taken in start order, not commit order: T1 changes g-1 and stays
    open, T2 changes g-2 and commits, a reader sees g-2 and a cursor that does not pass T1; T1
    commits: the next read reports g-1. g-3 never changes and is never reported. Whatever else
    the server has open; "busy": a transaction older than T1 is open throughout, so every read
    reports again what the earlier ones did."""
    dsn = postgres_dsn_or_skip()
    async with open_store("postgres", tmp_path) as store, AsyncExitStack() as stack:
        for gid in ("g-1", "g-2", "g-3"):
            await store.create(make_grant(gid))
        if busy:
            await stack.enter_async_context(older_transaction_open(dsn))
        feed = Feed(store, "always" if busy else "may")
        cursor = await feed.read(0, new=set())
        g1 = StatusChange("g-1", GrantStatus.REVOKED)
        g2 = StatusChange("g-2", GrantStatus.REVOKED)
        assert isinstance(store, PostgresGrantStore)
        table = sql.Identifier(store.schema, "grants")
        update = sql.SQL("UPDATE {} SET status = 'revoked' WHERE grant_id = %s").format(table)
        async with await psycopg.AsyncConnection.connect(dsn) as t1:
            row = await (await t1.execute("SELECT pg_current_xact_id()::text")).fetchone()
            assert row is not None
            await t1.execute(update, ("g-1",))  # T1: its id is older than T2's, still open
            await store.set_status("g-2", GrantStatus.REVOKED, reason="revoked")  # T2 commits
            cursor = await feed.read(cursor, new={g2})
            assert cursor <= int(row[0])  # the cursor does not pass the open T1
            await t1.commit()
        cursor = await feed.read(cursor, new={g1}, seen={g2})
        await feed.read(cursor, new=set(), seen={g1, g2})
