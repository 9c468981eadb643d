"""A grant revoked (or ended) through one replica is refused by every replica within one
status pass (broker.tokens.status_watch): two token cores over one store (one memory store
opened twice, one SQLite file, one PostgreSQL schema), B caching a token, A ending the grant.

Before, B served its cached token until it expired (up to one token lifetime) or until a
scheduler sweep (every tenth background pass) noticed. The passes are driven explicitly
(``read_status_changes``) or through an injected sleep: no wall-clock wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from broker.errors import GrantRevoked, ReauthorizationRequired, StoreError
from broker.keys.soft import SoftSealer
from broker.tokens.broker import TokenBroker
from broker.tokens.model import Grant, GrantStatus
from broker.tokens.settings import BackgroundPolicy, Seams
from broker.tokens.stores.base import GrantStore
from broker.tokens.stores.memory import MemoryGrantStore
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.parallel import unique_name
from tests.tokens.fakes import FakeRefresher, token_set
from tests.tokens.stores.faulty_store import FaultyMemoryStore
from tests.tokens.stores.helpers import drop_pg_schema, older_transaction_open, postgres_dsn_or_skip

LIFETIME = 3600.0
HANG_GUARD_S = 30.0  # turns a loop that never wakes into a failure; never asserted on
RETIRED_REASON = "identity_retired"  # what `broker keys rotate retire --force` records

Opener = Callable[[], Awaitable[GrantStore]]


class TickSleep:
    """The status watcher's injected sleep: each wake-up is one ``tick()``."""

    def __init__(self) -> None:
        self._ticks: asyncio.Queue[None] = asyncio.Queue()
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await self._ticks.get()

    def tick(self) -> None:
        self._ticks.put_nowait(None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


PG = pytest.mark.postgres


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=PG),
        pytest.param("postgres-busy", marks=PG),
    ]
)
async def opener(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Opener]:
    """Opens one more handle on one store per call: a replica each. "postgres-busy": another
    connection holds a transaction open throughout, so every status pass reads again the changes
    earlier passes read (the PostgreSQL feed's cursor is a server-wide transaction horizon): the
    counts asserted below hold all the same."""
    kind: str = request.param.removesuffix("-busy")
    sealer = SoftSealer()
    opened: list[GrantStore] = []
    dsn = postgres_dsn_or_skip() if kind == "postgres" else ""
    schema = unique_name("test_revoke") if kind == "postgres" else ""

    async def open_one() -> GrantStore:
        store: GrantStore
        if kind == "memory":
            first = opened[0] if opened else None
            store = MemoryGrantStore(clock, shared_with=first)  # type: ignore[arg-type]
        elif kind == "sqlite":
            store = await SqliteGrantStore.connect(str(tmp_path / "grants.db"), sealer, clock)
        else:
            store = await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema)
        opened.append(store)
        return store

    try:
        if request.param == "postgres-busy":
            async with older_transaction_open(dsn):
                yield open_one
        else:
            yield open_one
    finally:
        for store in opened:
            await store.close()
        if kind == "postgres":
            drop_pg_schema(dsn, schema)


def replica(store: GrantStore, clock: FakeClock, **seams: object) -> TokenBroker:
    return TokenBroker(
        store,
        FakeRefresher(clock),
        clock,
        seams=Seams(rng=random.Random(3), **seams),  # type: ignore[arg-type]
    )


async def add(broker: TokenBroker, clock: FakeClock) -> Grant:
    return await broker.add_grant(
        token_set(clock, lifetime=LIFETIME),
        label="svc",
        issuer="https://as.example",
        client_id="did:key:zClient",
    )


async def answer(broker: TokenBroker, grant_id: str) -> tuple[type[BaseException], str]:
    with pytest.raises(ReauthorizationRequired) as caught:
        await broker.get_access_token(grant_id)
    return caught.type, str(caught.value)


async def test_revoked_on_a_is_refused_by_b_after_one_status_pass(
    opener: Opener, clock: FakeClock
) -> None:
    a, b = replica(await opener(), clock), replica(await opener(), clock)
    grant, other = await add(a, clock), await add(a, clock)
    for g in (grant, other):
        assert (await b.get_access_token(g.grant_id)).access_token == "at-0"
    await b.read_status_changes()  # nothing changed yet
    assert (await b.get_access_token(grant.grant_id)).access_token == "at-0"  # a cache hit

    await a.revoke_grant(grant.grant_id)
    assert await b.read_status_changes() == 1
    assert await answer(b, grant.grant_id) == await answer(a, grant.grant_id)
    assert (await answer(b, grant.grant_id))[0] is GrantRevoked
    assert (await b.get_access_token(other.grant_id)).access_token == "at-0"
    assert await b.read_status_changes() == 0  # seen once; an idle pass changes nothing


async def test_grants_ended_by_retire_force_are_refused_by_b(
    opener: Opener, clock: FakeClock
) -> None:
    """`broker keys rotate retire --force` marks each live grant of the retired identity
    REAUTHORIZATION_REQUIRED through the ledger store, under the grant's refresh lock: the
    same store call here, from a third handle (the ceremony's own process)."""
    a, b = replica(await opener(), clock), replica(await opener(), clock)
    ledger = await opener()
    grants = [await add(a, clock) for _ in range(3)]
    for g in grants:
        await b.get_access_token(g.grant_id)
    for g in grants[:2]:
        async with ledger.refresh_lock(g.grant_id):
            await ledger.set_status(
                g.grant_id, GrantStatus.REAUTHORIZATION_REQUIRED, reason=RETIRED_REASON
            )
    assert await b.read_status_changes() == 2
    assert await a.read_status_changes() == 2
    for g in grants[:2]:
        assert (await answer(b, g.grant_id))[0] is ReauthorizationRequired
        assert await answer(b, g.grant_id) == await answer(a, g.grant_id)
    assert (await b.get_access_token(grants[2].grant_id)).access_token == "at-0"


async def test_a_watch_on_b_ends_as_on_a(opener: Opener, clock: FakeClock) -> None:
    a, b = replica(await opener(), clock), replica(await opener(), clock)
    grant = await add(a, clock)
    on_a, on_b = a.watch(grant.grant_id), b.watch(grant.grant_id)
    assert (await anext(on_a)).access_token == (await anext(on_b)).access_token == "at-0"
    await a.revoke_grant(grant.grant_id)
    await b.read_status_changes()
    async with asyncio.timeout(HANG_GUARD_S):
        with pytest.raises(GrantRevoked) as ended_on_a:
            await anext(on_a)
        with pytest.raises(GrantRevoked) as ended_on_b:
            await anext(on_b)
    assert str(ended_on_b.value) == str(ended_on_a.value)
    assert b.watcher_count(grant.grant_id) == 0


async def test_the_running_watcher_drops_the_grant_at_its_next_wake_up(
    opener: Opener, clock: FakeClock
) -> None:
    sleep = TickSleep()
    a = replica(await opener(), clock)
    b = TokenBroker(
        await opener(),
        FakeRefresher(clock),
        clock,
        background=BackgroundPolicy(status_interval=0.5),
        seams=Seams(rng=random.Random(3), status_sleep=sleep),
    )
    grant = await add(a, clock)
    await b.start()
    try:
        await b.get_access_token(grant.grant_id)
        await until(lambda: len(sleep.waits) >= 1)  # the first pass ran; asleep
        await a.revoke_grant(grant.grant_id)
        sleep.tick()
        await until(lambda: len(sleep.waits) >= 2)  # the next pass ran
        assert (await answer(b, grant.grant_id))[0] is GrantRevoked
        assert sleep.waits[:2] == [0.5, 0.5]
    finally:
        await b.stop()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(HANG_GUARD_S):
        while not condition():
            await asyncio.sleep(0)


async def test_a_store_error_is_logged_once_and_the_pass_retried(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    shared = MemoryGrantStore(clock)
    faulty = FaultyMemoryStore(clock, shared_with=shared)
    a, b = replica(shared, clock), replica(faulty, clock)
    grant = await add(a, clock)
    await b.get_access_token(grant.grant_id)
    await a.revoke_grant(grant.grant_id)
    caplog.set_level(logging.INFO, logger="broker.tokens.broker")
    for _ in range(3):
        faulty.fail_next("status_changes", StoreError("db down"))
        assert await b.read_status_changes() == 0
    assert (await b.get_access_token(grant.grant_id)).access_token == "at-0"  # not known yet
    warnings = [r for r in caplog.records if "status changes" in r.getMessage()]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert await b.read_status_changes() == 1  # the cursor was kept: the change is not lost
    assert (await answer(b, grant.grant_id))[0] is GrantRevoked
    messages = [r.getMessage() for r in caplog.records]
    assert "grant status changes are read again" in messages


async def test_a_grant_b_never_served_is_not_remembered(clock: FakeClock) -> None:
    shared = MemoryGrantStore(clock)
    a, b = replica(shared, clock), replica(MemoryGrantStore(clock, shared_with=shared), clock)
    grant = await add(a, clock)
    await a.revoke_grant(grant.grant_id)
    assert await b.read_status_changes() == 0  # nothing cached: its first read sees the status
    assert (await answer(b, grant.grant_id))[0] is GrantRevoked
