"""The background pass over an indexed store (issue 11): it opens only what it refreshes, and
replicas sharing a store divide the due grants through refresh leases (G07, J02).

Two replicas = two TokenBrokers, each on its own handle of one store (memory: ``shared_with``;
SQLite: one file; PostgreSQL: one schema).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.tokens.broker import TokenBroker
from broker.tokens.scheduler import CLAIM_LEASE
from broker.tokens.settings import Seams
from broker.tokens.stores.memory import MemoryGrantStore
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.fakes import FakeRefresher, token_set
from tests.tokens.stores.helpers import (
    CountingSealer,
    drop_pg_schema,
    pg_schema_name,
    postgres_dsn_or_skip,
)

LIFETIME = 3600.0
GRANTS = 20
HANG_GUARD_S = 30.0  # turns a deadlock into a failure; never asserted on


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def two_handles(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[tuple[Any, Any, CountingSealer]]:
    sealer = CountingSealer()
    a: Any
    b: Any
    if request.param == "memory":
        a = MemoryGrantStore(clock)
        yield a, MemoryGrantStore(clock, shared_with=a), sealer
    elif request.param == "sqlite":
        path = str(tmp_path / "grants.db")
        a = await SqliteGrantStore.connect(path, sealer, clock)
        b = await SqliteGrantStore.connect(path, sealer, clock)
        yield a, b, sealer
        await a.close()
        await b.close()
    else:
        dsn = postgres_dsn_or_skip()
        schema = pg_schema_name()
        a = await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema)
        b = await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema)
        try:
            yield a, b, sealer
        finally:
            await a.close()
            await b.close()
            drop_pg_schema(dsn, schema)


def make_broker(store: Any, refresher: FakeRefresher, clock: FakeClock) -> TokenBroker:
    return TokenBroker(store, refresher, clock, seams=Seams(rng=random.Random(3)))


async def add_grants(broker: TokenBroker, clock: FakeClock, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        grant = await broker.add_grant(
            token_set(clock, lifetime=LIFETIME),
            label="svc",
            issuer="https://as.example",
            client_id="did:key:zClient",
        )
        ids.append(grant.grant_id)
    return ids


async def test_a_pass_with_nothing_due_opens_no_token(
    two_handles: tuple[Any, Any, CountingSealer], clock: FakeClock
) -> None:
    store, _, sealer = two_handles
    refresher = FakeRefresher(clock, lifetime=LIFETIME)
    broker = make_broker(store, refresher, clock)
    await add_grants(broker, clock, GRANTS)
    opened = sealer.opens
    clock.advance(60)
    assert await broker.refresh_due_now() == 0
    assert await broker.refresh_due_now() == 0
    assert sealer.opens == opened, "a pass with nothing due opened tokens"
    clock.advance(LIFETIME - 60 - 1)  # every grant due now
    assert await broker.refresh_due_now() == GRANTS
    await broker.wait_idle()
    assert refresher.calls == GRANTS


async def test_g07_replicas_divide_the_due_grants_and_refresh_each_once(
    two_handles: tuple[Any, Any, CountingSealer], clock: FakeClock
) -> None:
    store_a, store_b, _ = two_handles
    refresher = FakeRefresher(clock, lifetime=LIFETIME)
    a = make_broker(store_a, refresher, clock)
    b = make_broker(store_b, refresher, clock)
    ids = await add_grants(a, clock, GRANTS)
    clock.advance(LIFETIME - 1)
    refresher.gate = asyncio.Event()
    pass_a = asyncio.create_task(a.refresh_due_now())
    async with asyncio.timeout(HANG_GUARD_S):
        await refresher.entered.wait()
    pass_b = asyncio.create_task(b.refresh_due_now())
    for _ in range(50):
        await asyncio.sleep(0)
    refresher.gate.set()
    async with asyncio.timeout(HANG_GUARD_S):
        tried = await asyncio.gather(pass_a, pass_b)
        await a.wait_idle()
        await b.wait_idle()
    assert list(tried) == [GRANTS, 0], "replica B took grants replica A had claimed"
    assert refresher.calls == GRANTS
    assert refresher.used == ["rt-0"] * GRANTS
    for grant_id in ids:
        assert (await store_b.get(grant_id)).version == 2


async def test_g07_a_crashed_replicas_lease_expires_and_another_refreshes(
    two_handles: tuple[Any, Any, CountingSealer], clock: FakeClock
) -> None:
    store_a, store_b, _ = two_handles
    refresher = FakeRefresher(clock, lifetime=LIFETIME)
    a = make_broker(store_a, refresher, clock)
    b = make_broker(store_b, refresher, clock)
    await add_grants(a, clock, 3)
    clock.advance(LIFETIME - 200)
    crashed = await store_a.claim_due(clock.now(), owner="crashed-replica", lease=CLAIM_LEASE)
    assert len(crashed) == 3
    assert await b.refresh_due_now() == 0
    clock.advance(CLAIM_LEASE)
    assert await b.refresh_due_now() == 3
    await b.wait_idle()
    assert refresher.calls == 3


async def test_list_grants_opens_no_token(
    two_handles: tuple[Any, Any, CountingSealer], clock: FakeClock
) -> None:
    store, _, sealer = two_handles
    broker = make_broker(store, FakeRefresher(clock, lifetime=LIFETIME), clock)
    ids = await add_grants(broker, clock, 3)
    opened = sealer.opens
    listed = await broker.list_grants("svc")
    assert sorted(g.grant_id for g in listed) == sorted(ids)
    assert all(not hasattr(g, "access_token") for g in listed)
    assert sealer.opens == opened, "ListGrants opened tokens"
