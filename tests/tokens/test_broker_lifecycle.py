"""TokenBroker: watch, crash recovery (G02), background refresher (J02, J05), observer, spans."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.errors import (
    AuthServerUnavailable,
    GrantNotFound,
    GrantRevoked,
    InvalidGrant,
    ReauthorizationRequired,
    StoreError,
)
from broker.tokens.broker import TokenBroker
from broker.tokens.freshness import MIN_SERVE_TTL, REFRESH_THRESHOLD, Freshness
from broker.tokens.model import AccessToken, Grant, GrantStatus
from broker.tokens.observer import RefreshOutcome
from broker.tokens.settings import (
    BackgroundPolicy,
    Reporting,
    Seams,
    Sleep,
)
from tests.clock import FakeClock
from tests.tokens.fakes import FakeGrantStore, FakeRefresher, token_set

T = REFRESH_THRESHOLD
LIFETIME = 3600.0
HANG_GUARD_S = 30.0  # turns a dead background loop into a failure; never asserted on


class TickSleep:
    """An injected ``sleep`` for the background loop: each wake-up is one ``tick()``."""

    def __init__(self) -> None:
        self._ticks: asyncio.Queue[None] = asyncio.Queue()
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await self._ticks.get()

    def tick(self) -> None:
        self._ticks.put_nowait(None)


class RecordingObserver:
    def __init__(self) -> None:
        self.served: list[tuple[str, Freshness, bool]] = []
        self.refreshes: list[tuple[str, RefreshOutcome]] = []
        self.joined = 0

    def token_served(self, grant_id: str, freshness: Freshness, *, cache_hit: bool) -> None:
        self.served.append((grant_id, freshness, cache_hit))

    def refresh_finished(self, grant_id: str, outcome: RefreshOutcome, *, duration: float) -> None:
        assert duration >= 0
        self.refreshes.append((grant_id, outcome))

    def single_flight_joined(self, grant_id: str) -> None:
        self.joined += 1


class BrokenObserver(RecordingObserver):
    def token_served(self, grant_id: str, freshness: Freshness, *, cache_hit: bool) -> None:
        raise RuntimeError("metrics backend down")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> FakeGrantStore:
    return FakeGrantStore(clock)


@pytest.fixture
def refresher(clock: FakeClock) -> FakeRefresher:
    return FakeRefresher(clock, lifetime=LIFETIME)


def make_broker(
    store: FakeGrantStore,
    refresher: FakeRefresher,
    clock: FakeClock,
    *,
    sleep: Sleep | None = None,
    id_factory: Callable[[], str] | None = None,
    **kwargs: Any,
) -> TokenBroker:
    """A broker with a seeded rng; ``sleep``/``id_factory`` go into its Seams, ``kwargs`` to
    TokenBroker (refresh=, backoff=, background=, reporting=, watch_queue_size=)."""
    seams = Seams(rng=random.Random(7))
    if sleep is not None:
        seams = dataclasses.replace(seams, sleep=sleep)
    if id_factory is not None:
        seams = dataclasses.replace(seams, id_factory=id_factory)
    return TokenBroker(store, refresher, clock, seams=seams, **kwargs)


async def add(broker: TokenBroker, clock: FakeClock, label: str = "svc") -> Grant:
    return await broker.add_grant(
        token_set(clock, lifetime=LIFETIME),
        label=label,
        issuer="https://as.example",
        client_id="did:key:zClient",
    )


def to_expiry(clock: FakeClock, grant: Grant, before: float) -> None:
    clock.advance(grant.access_expires_at - before - clock.now())


# --- watch -------------------------------------------------------------------------------------


async def test_watch_yields_current_then_each_new_token_then_ends_when_the_grant_dies(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock)
    grant = await add(broker, clock)
    stream = broker.watch(grant.grant_id)
    assert (await anext(stream)).access_token == "at-0"
    to_expiry(clock, grant, 1)
    await broker.get_access_token(grant.grant_id)
    new = await anext(stream)
    assert (new.access_token, new.freshness) == ("at-1", Freshness.FRESH)
    clock.advance(LIFETIME - 1)
    refresher.errors = [InvalidGrant(status_code=400)]
    with pytest.raises(ReauthorizationRequired):
        await broker.get_access_token(grant.grant_id)
    with pytest.raises(ReauthorizationRequired):
        await anext(stream)


async def test_watch_queue_is_bounded_and_keeps_the_newest(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock, watch_queue_size=2)
    grant = await add(broker, clock)
    stream = broker.watch(grant.grant_id)
    assert (await anext(stream)).access_token == "at-0"
    for _ in range(5):
        clock.advance(LIFETIME - 1)
        await broker.get_access_token(grant.grant_id)
    assert [(await anext(stream)).access_token for _ in range(2)] == ["at-4", "at-5"]
    await stream.aclose()
    assert broker.watcher_count() == 0


async def test_watch_ends_with_grant_revoked(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock)
    grant = await add(broker, clock)
    stream = broker.watch(grant.grant_id)
    await anext(stream)
    await broker.revoke_grant(grant.grant_id)
    with pytest.raises(GrantRevoked):
        await anext(stream)


async def test_watch_of_a_dead_grant_raises_at_once(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock)
    grant = await add(broker, clock)
    await store.set_status(grant.grant_id, GrantStatus.REAUTHORIZATION_REQUIRED, reason="x")
    cold = make_broker(store, refresher, clock)
    with pytest.raises(ReauthorizationRequired):
        await anext(cold.watch(grant.grant_id))


async def test_watch_sees_a_refresh_found_in_the_store_by_another_replica(
    store: FakeGrantStore, clock: FakeClock
) -> None:
    a = make_broker(store, FakeRefresher(clock), clock)
    b = make_broker(store, FakeRefresher(clock), clock)
    grant = await add(a, clock)
    stream = b.watch(grant.grant_id)
    assert (await anext(stream)).access_token == "at-0"
    to_expiry(clock, grant, T - 1)
    await a.get_access_token(grant.grant_id, min_ttl=T)  # A refreshes
    assert await b.refresh_due_now() == 0  # B's pass reads the store, finds it fresh
    assert (await anext(stream)).access_token == "at-1"


# --- G02: crash recovery -----------------------------------------------------------------------


async def interrupted_grant(store: FakeGrantStore, clock: FakeClock) -> Grant:
    """A grant whose refresh was in flight when the previous process died."""
    seed = make_broker(store, FakeRefresher(clock), clock)
    grant = await add(seed, clock)
    await store.mark_refresh_started(grant.grant_id, clock.now())
    return store.grants[grant.grant_id]


async def test_g02_interrupted_refresh_is_redone_once_with_the_old_refresh_token(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await interrupted_grant(store, clock)
    broker = make_broker(store, refresher, clock, sleep=TickSleep())
    await broker.start()
    try:
        assert refresher.used == ["rt-0"]  # the token was FRESH, the intent alone triggered it
        stored = store.grants[grant.grant_id]
        assert (stored.refresh_token, stored.refresh_started_at, stored.version) == (
            "rt-1",
            None,
            2,
        )
        assert (await broker.get_access_token(grant.grant_id)).access_token == "at-1"
    finally:
        await broker.stop()
    assert refresher.calls == 1


async def test_g02_interrupted_refresh_answered_invalid_grant_flags_the_grant_without_looping(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await interrupted_grant(store, clock)
    refresher.errors = [InvalidGrant(status_code=400)]
    broker = make_broker(store, refresher, clock, sleep=TickSleep())
    assert await broker.recover_interrupted() == [grant.grant_id]
    assert store.grants[grant.grant_id].status is GrantStatus.REAUTHORIZATION_REQUIRED
    clock.advance(LIFETIME)
    assert await broker.refresh_due_now() == 0
    assert await broker.recover_interrupted() == []
    with pytest.raises(ReauthorizationRequired):
        await broker.get_access_token(grant.grant_id)
    assert refresher.calls == 1


async def test_g02_recovery_with_as_down_records_the_error_and_keeps_the_intent(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await interrupted_grant(store, clock)
    refresher.errors = [AuthServerUnavailable("down")]
    broker = make_broker(store, refresher, clock)
    assert await broker.recover_interrupted() == [grant.grant_id]
    stored = store.grants[grant.grant_id]
    assert (stored.status, stored.last_error) == (GrantStatus.ACTIVE, "as_unavailable")
    assert stored.refresh_started_at is not None
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-0"


# --- background refresher: J02 spread, J05 stop --------------------------------------------------


async def test_j02_grants_expiring_together_are_refreshed_over_several_passes(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    interval = 15.0
    broker = make_broker(store, refresher, clock, background=BackgroundPolicy(interval=interval))
    grants = [await add(broker, clock) for _ in range(60)]  # all expire at the same instant
    to_expiry(clock, grants[0], T + 1)
    per_pass = []
    while refresher.calls < len(grants):
        clock.advance(interval)
        before = refresher.calls
        await broker.refresh_due_now()
        per_pass.append(refresher.calls - before)
        remaining = grants[0].access_expires_at - clock.now()
        assert remaining > MIN_SERVE_TTL, "every grant refreshed while its token was valid"
    assert refresher.calls == len(grants)
    assert max(per_pass) < len(grants)
    assert sum(1 for n in per_pass if n) >= 2
    assert sorted(refresher.used) == sorted(["rt-0"] * len(grants))  # one refresh per grant


async def test_j02_nothing_is_due_while_tokens_are_fresh(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock)
    await add(broker, clock)
    clock.advance(LIFETIME - T - 1)
    assert await broker.refresh_due_now() == 0
    assert refresher.calls == 0


async def test_background_pass_skips_dead_grants_and_grants_in_back_off(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock)
    dead, down = await add(broker, clock), await add(broker, clock)
    await broker.revoke_grant(dead.grant_id)
    to_expiry(clock, down, T * 0.9 - 1)  # due whatever the per-token jitter
    refresher.errors = [AuthServerUnavailable("down")]
    assert await broker.refresh_due_now() == 1
    assert await broker.refresh_due_now() == 0  # backing off
    assert refresher.calls == 1


async def test_background_pass_forgets_grants_deleted_from_the_store(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock)
    kept, deleted = await add(broker, clock), await add(broker, clock)
    await store.delete(deleted.grant_id)
    assert (await broker.get_access_token(deleted.grant_id)).access_token == "at-0"  # cached
    await broker.refresh_due_now()
    with pytest.raises(GrantNotFound):
        await broker.get_access_token(deleted.grant_id)
    assert (await broker.get_access_token(kept.grant_id)).access_token == "at-0"


async def test_background_pass_survives_a_store_outage(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    sleep = TickSleep()
    broker = make_broker(store, refresher, clock, sleep=sleep)
    grant = await add(broker, clock)
    await broker.start()
    store.fail["list"] = StoreError("db down")
    sleep.tick()  # this pass fails on list()
    to_expiry(clock, grant, T * 0.9 - 1)
    refresher.gate = asyncio.Event()
    sleep.tick()  # the next pass still runs
    async with asyncio.timeout(HANG_GUARD_S):
        await refresher.entered.wait()
    refresher.gate.set()
    await broker.stop()
    assert store.grants[grant.grant_id].access_token == "at-1"
    assert sleep.waits[:2] == [15.0, 15.0]


async def test_j05_stop_waits_for_in_flight_refreshes_to_persist(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    sleep = TickSleep()
    broker = make_broker(store, refresher, clock, sleep=sleep)
    grant = await add(broker, clock)
    await broker.start()
    to_expiry(clock, grant, T * 0.9 - 1)
    refresher.gate = asyncio.Event()
    sleep.tick()
    await refresher.entered.wait()  # the background refresh is at the AS
    stopping = asyncio.create_task(broker.stop())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not stopping.done()
    assert store.grants[grant.grant_id].access_token == "at-0"
    refresher.gate.set()
    await stopping
    assert store.grants[grant.grant_id].access_token == "at-1"
    assert "rotate" in store.ops(grant.grant_id)


async def test_after_stop_stale_tokens_are_served_without_background_refresh(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock, sleep=TickSleep())
    grant = await add(broker, clock)
    await broker.start()
    await broker.stop()
    to_expiry(clock, grant, T - 1)
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-0"
    await broker.wait_idle()
    assert refresher.calls == 0
    to_expiry(clock, grant, 1)  # blocking refreshes still work while draining
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-1"


# --- observer and spans ------------------------------------------------------------------------


async def test_observer_sees_serves_refreshes_and_joins(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    observer = RecordingObserver()
    broker = make_broker(store, refresher, clock, reporting=Reporting(observer=observer))
    grant = await add(broker, clock)
    gid = grant.grant_id
    await broker.get_access_token(gid)
    to_expiry(clock, grant, 1)
    refresher.gate = asyncio.Event()
    tasks = [asyncio.create_task(broker.get_access_token(gid)) for _ in range(3)]
    await refresher.entered.wait()
    refresher.gate.set()
    await asyncio.gather(*tasks)
    assert observer.joined == 2
    assert observer.refreshes == [(gid, RefreshOutcome.REFRESHED)]
    assert observer.served[0] == (gid, Freshness.FRESH, True)
    assert observer.served[1:] == [(gid, Freshness.FRESH, False)] * 3
    clock.advance(LIFETIME - 1)
    refresher.errors = [InvalidGrant(status_code=400)]
    with pytest.raises(ReauthorizationRequired):
        await broker.get_access_token(gid)
    assert observer.refreshes[-1] == (gid, RefreshOutcome.DEAD)


async def test_a_failing_observer_does_not_break_serving(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock, reporting=Reporting(observer=BrokenObserver()))
    grant = await add(broker, clock)
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-0"


async def test_spans_carry_grant_freshness_and_cache_hit_but_no_secret(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = make_broker(store, refresher, clock, reporting=Reporting(tracer_provider=provider))
    grant = await add(broker, clock)
    await broker.get_access_token(grant.grant_id)
    to_expiry(clock, grant, 1)
    token: AccessToken = await broker.get_access_token(grant.grant_id)
    spans = exporter.get_finished_spans()
    names = Counter(s.name for s in spans)
    assert names == {"tokens.get": 2, "tokens.single_flight_wait": 1, "tokens.refresh": 1}
    gets = [s for s in spans if s.name == "tokens.get"]
    assert [dict(s.attributes or {}) for s in gets] == [
        {"grant.id": grant.grant_id, "token.freshness": "fresh", "cache.hit": True},
        {"grant.id": grant.grant_id, "token.freshness": "invalid", "cache.hit": True},
    ]
    refresh = next(s for s in spans if s.name == "tokens.refresh")
    assert refresh.attributes is not None
    assert refresh.attributes["refresh.outcome"] == "refreshed"
    wait = next(s for s in spans if s.name == "tokens.single_flight_wait")
    caller = gets[1].context
    assert refresh.parent is not None and wait.parent is not None and caller is not None
    assert refresh.parent.span_id == wait.parent.span_id == caller.span_id
    secrets = {"at-0", "at-1", "rt-0", "rt-1", token.access_token}
    for span in spans:
        for value in (span.attributes or {}).values():
            assert str(value) not in secrets
    provider.shutdown()


async def test_invalid_grant_span_records_the_oauth_error_code(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = make_broker(store, refresher, clock, reporting=Reporting(tracer_provider=provider))
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    refresher.errors = [InvalidGrant(status_code=400)]
    with pytest.raises(ReauthorizationRequired):
        await broker.get_access_token(grant.grant_id)
    refresh = next(s for s in exporter.get_finished_spans() if s.name == "tokens.refresh")
    assert dict(refresh.attributes or {}) == {
        "grant.id": grant.grant_id,
        "refresh.recovering": False,
        "oauth.error": "invalid_grant",
        "refresh.outcome": "dead",
    }
    provider.shutdown()


async def test_token_type_and_scope_are_served(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock)
    tokens = dataclasses.replace(token_set(clock), scope="openid learcredential")
    grant = await broker.add_grant(tokens, label="svc", issuer="https://as", client_id="c")
    token = await broker.get_access_token(grant.grant_id)
    assert (token.token_type, token.scope) == ("Bearer", "openid learcredential")
