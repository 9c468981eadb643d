"""A storm of due grants (issue 11, bench/storm.py): when a pass claimed ``CLAIM_LIMIT`` grants
and refreshed them all, the next pass starts at once instead of an interval later, until a pass
claims fewer; a pass with a failed refresh waits the interval as before (an AS in trouble sees
one claim per interval)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from broker.errors import AuthServerUnavailable
from broker.tokens import scheduler
from broker.tokens.broker import TokenBroker
from broker.tokens.settings import BackgroundPolicy, Seams
from broker.tokens.stores.memory import MemoryGrantStore
from tests.clock import FakeClock
from tests.tokens.fakes import FakeRefresher, token_set
from tests.tokens.test_broker_lifecycle import TickSleep

LIFETIME = 3600.0
LIMIT = 3
HANG_GUARD_S = 30.0  # turns a loop that never wakes into a failure; never asserted on


@pytest.fixture(autouse=True)
def small_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "CLAIM_LIMIT", LIMIT)


async def due_broker(
    clock: FakeClock, refresher: FakeRefresher, sleep: TickSleep, grants: int
) -> TokenBroker:
    store = MemoryGrantStore(clock)
    broker = TokenBroker(
        store,
        refresher,
        clock,
        background=BackgroundPolicy(interval=30.0),
        seams=Seams(rng=random.Random(5), sleep=sleep),
    )
    for _ in range(grants):
        await broker.add_grant(
            token_set(clock, lifetime=LIFETIME),
            label="storm",
            issuer="https://as.example",
            client_id="did:key:zClient",
        )
    clock.advance(LIFETIME - 1)  # every grant due
    return broker


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(HANG_GUARD_S):
        while not condition():
            await asyncio.sleep(0)


async def test_full_claims_refreshed_without_failure_are_followed_at_once() -> None:
    clock = FakeClock()
    refresher = FakeRefresher(clock, lifetime=LIFETIME)
    sleep = TickSleep()
    broker = await due_broker(clock, refresher, sleep, 2 * LIMIT + 1)
    await broker.start()
    try:
        sleep.tick()  # one wake-up: claims of 3, 3, then 1
        await until(lambda: len(sleep.waits) == 2)  # the loop sleeps again
        assert refresher.calls == 2 * LIMIT + 1
        assert sleep.waits == [30.0, 30.0]
    finally:
        await broker.stop()


async def test_a_full_claim_with_a_failed_refresh_waits_the_interval() -> None:
    clock = FakeClock()
    refresher = FakeRefresher(clock, lifetime=LIFETIME)
    refresher.errors = [AuthServerUnavailable("as down")]
    sleep = TickSleep()
    broker = await due_broker(clock, refresher, sleep, 2 * LIMIT + 1)
    await broker.start()
    try:
        sleep.tick()
        await until(lambda: len(sleep.waits) == 2)
        assert refresher.calls == LIMIT  # one claim, then the interval
    finally:
        await broker.stop()
