"""TokenBroker over the real grant stores (memory, SQLite, PostgreSQL): the single-flight and
failure paths persist through each store's own transactions and locks.

G07 with PostgreSQL uses two store instances (two connection pools, as two replicas would): the
advisory refresh lock makes the second broker wait, re-read and skip its refresh.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from broker.errors import InvalidGrant, ReauthorizationRequired
from broker.keys.soft import SoftSealer
from broker.tokens.broker import TokenBroker
from broker.tokens.model import Grant, GrantStatus
from broker.tokens.settings import Seams
from broker.tokens.stores.base import GrantStore
from broker.tokens.stores.memory import MemoryGrantStore
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.fakes import FakeRefresher, token_set
from tests.tokens.stores.helpers import drop_pg_schema, pg_schema_name, postgres_dsn_or_skip

LIFETIME = 3600.0
HANG_GUARD_S = 30.0  # turns a deadlock into a failure; never asserted on

# Opens another handle on the same store (a second replica); memory shares the instance.
Opener = Callable[[], Awaitable[GrantStore]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[tuple[GrantStore, Opener, str]]:
    kind: str = request.param
    sealer = SoftSealer()
    opened: list[GrantStore] = []
    schema = ""
    dsn = ""

    async def opener() -> GrantStore:
        store: GrantStore
        if kind == "memory":
            if opened:
                return opened[0]
            store = MemoryGrantStore(clock)
        elif kind == "sqlite":
            store = await SqliteGrantStore.connect(str(tmp_path / "grants.db"), sealer, clock)
        else:
            store = await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema)
        opened.append(store)
        return store

    if kind == "postgres":
        dsn = postgres_dsn_or_skip()
        schema = pg_schema_name()
    try:
        yield await opener(), opener, kind
    finally:
        for store in opened:
            await store.close()
        if kind == "postgres":
            drop_pg_schema(dsn, schema)


def make_broker(store: GrantStore, refresher: FakeRefresher, clock: FakeClock) -> TokenBroker:
    return TokenBroker(store, refresher, clock, seams=Seams(rng=random.Random(3)))


async def add(broker: TokenBroker, clock: FakeClock) -> Grant:
    return await broker.add_grant(
        token_set(clock, lifetime=LIFETIME),
        label="svc",
        issuer="https://as.example",
        client_id="did:key:zClient",
    )


async def test_g06_a08b_one_refresh_for_200_callers_is_durable_in_the_store(
    stores: tuple[GrantStore, Opener, str], clock: FakeClock
) -> None:
    store, opener, _ = stores
    refresher = FakeRefresher(clock)
    broker = make_broker(store, refresher, clock)
    grant = await add(broker, clock)
    clock.advance(LIFETIME - 1)
    refresher.gate = asyncio.Event()
    tasks = [asyncio.create_task(broker.get_access_token(grant.grant_id)) for _ in range(200)]
    async with asyncio.timeout(HANG_GUARD_S):
        await refresher.entered.wait()
    refresher.gate.set()
    tokens = await asyncio.gather(*tasks)
    assert {t.access_token for t in tokens} == {"at-1"}
    assert refresher.calls == 1
    stored = await (await opener()).get(grant.grant_id)
    assert (stored.access_token, stored.refresh_token, stored.version) == ("at-1", "rt-1", 2)
    assert stored.refresh_started_at is None


async def test_a05_dead_grant_is_persisted_for_every_replica(
    stores: tuple[GrantStore, Opener, str], clock: FakeClock
) -> None:
    store, opener, _ = stores
    refresher = FakeRefresher(clock)
    broker = make_broker(store, refresher, clock)
    grant = await add(broker, clock)
    clock.advance(LIFETIME - 1)
    refresher.errors = [InvalidGrant(status_code=400)]
    with pytest.raises(ReauthorizationRequired):
        await broker.get_access_token(grant.grant_id)
    other_refresher = FakeRefresher(clock)
    other = make_broker(await opener(), other_refresher, clock)
    with pytest.raises(ReauthorizationRequired):
        await other.get_access_token(grant.grant_id)
    assert (refresher.calls, other_refresher.calls) == (1, 0)
    assert (await store.get(grant.grant_id)).status is GrantStatus.REAUTHORIZATION_REQUIRED


async def test_f05_cancelled_caller_refresh_still_persists(
    stores: tuple[GrantStore, Opener, str], clock: FakeClock
) -> None:
    store, _, _ = stores
    refresher = FakeRefresher(clock)
    broker = make_broker(store, refresher, clock)
    grant = await add(broker, clock)
    clock.advance(LIFETIME - 1)
    refresher.gate = asyncio.Event()
    caller = asyncio.create_task(broker.get_access_token(grant.grant_id))
    async with asyncio.timeout(HANG_GUARD_S):
        await refresher.entered.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    refresher.gate.set()
    await broker.wait_idle()
    assert (await store.get(grant.grant_id)).refresh_token == "rt-1"
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-1"
    assert refresher.calls == 1


async def test_g02_restart_redoes_the_interrupted_refresh_once(
    stores: tuple[GrantStore, Opener, str], clock: FakeClock
) -> None:
    store, opener, _ = stores
    grant = await add(make_broker(store, FakeRefresher(clock), clock), clock)
    await store.mark_refresh_started(grant.grant_id, clock.now())  # then the process "died"
    refresher = FakeRefresher(clock)
    restarted = make_broker(await opener(), refresher, clock)
    assert await restarted.recover_interrupted() == [grant.grant_id]
    assert refresher.used == ["rt-0"]
    stored = await store.get(grant.grant_id)
    assert (stored.refresh_token, stored.refresh_started_at) == ("rt-1", None)


async def test_g07_second_replica_waits_for_the_lock_rereads_and_does_not_refresh(
    stores: tuple[GrantStore, Opener, str], clock: FakeClock
) -> None:
    store, opener, kind = stores
    if kind == "sqlite":
        pytest.skip("SQLite's refresh lock is per process by design (one replica)")
    refresher_a, refresher_b = FakeRefresher(clock), FakeRefresher(clock)
    a = make_broker(store, refresher_a, clock)
    b = make_broker(await opener(), refresher_b, clock)
    grant = await add(a, clock)
    assert (await b.get_access_token(grant.grant_id)).access_token == "at-0"
    clock.advance(LIFETIME - 1)
    refresher_a.gate = asyncio.Event()
    task_a = asyncio.create_task(a.get_access_token(grant.grant_id))
    async with asyncio.timeout(HANG_GUARD_S):
        await refresher_a.entered.wait()
    task_b = asyncio.create_task(b.get_access_token(grant.grant_id))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task_b.done()  # B is waiting for A's refresh lock
    refresher_a.gate.set()
    async with asyncio.timeout(HANG_GUARD_S):
        token_a, token_b = await asyncio.gather(task_a, task_b)
    assert token_a.access_token == token_b.access_token == "at-1"
    assert (refresher_a.calls, refresher_b.calls) == (1, 0)
