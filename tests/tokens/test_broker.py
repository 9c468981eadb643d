"""TokenBroker: cache, freshness, single flight, failures (catalogue rows in the test names)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import random
from collections.abc import Callable
from typing import Any

import pytest

from broker.errors import (
    AuthServerUnavailable,
    GrantExists,
    GrantNotFound,
    GrantRevoked,
    InvalidArgument,
    InvalidGrant,
    ReauthorizationRequired,
    StoreError,
    TokenValidationError,
)
from broker.tokens.broker import TokenBroker
from broker.tokens.freshness import MIN_SERVE_TTL, REFRESH_THRESHOLD, Freshness
from broker.tokens.model import Grant, GrantStatus
from broker.tokens.settings import (
    REFRESH_BACKOFF,
    BackgroundPolicy,
    RefreshPolicy,
    Seams,
    Sleep,
)
from tests.clock import FakeClock
from tests.tokens.fakes import FakeGrantStore, FakeRefresher, token_set

T = REFRESH_THRESHOLD
LIFETIME = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> FakeGrantStore:
    return FakeGrantStore(clock)


@pytest.fixture
def refresher(clock: FakeClock) -> FakeRefresher:
    return FakeRefresher(clock, lifetime=LIFETIME)


NO_JITTER: dict[str, Any] = {
    "refresh": RefreshPolicy(jitter=0.0),
    "backoff": dataclasses.replace(REFRESH_BACKOFF, jitter=0.0),
}


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


@pytest.fixture
def broker(store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock) -> TokenBroker:
    return make_broker(store, refresher, clock)


async def add(broker: TokenBroker, clock: FakeClock, label: str = "svc") -> Grant:
    return await broker.add_grant(
        token_set(clock, lifetime=LIFETIME),
        label=label,
        issuer="https://as.example",
        client_id="did:key:zClient",
    )


def to_expiry(clock: FakeClock, grant: Grant, before: float) -> None:
    """Move both clocks so that ``before`` seconds remain on the grant's access token."""
    clock.advance(grant.access_expires_at - before - clock.now())


# --- G08: freshness decides --------------------------------------------------------------------


async def test_g08_fresh_is_served_from_cache_without_store_read(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, T + 1)
    token = await broker.get_access_token(grant.grant_id)
    assert (token.access_token, token.freshness) == ("at-0", Freshness.FRESH)
    assert token.subject == "did:key:zUser"
    assert token.expires_at == grant.access_expires_at
    assert store.gets == 0
    assert refresher.calls == 0
    assert "at-0" not in repr(token)


async def test_g08_cold_cache_reads_the_store_once(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(make_broker(store, refresher, clock), clock)
    cold = make_broker(store, refresher, clock)
    for _ in range(3):
        assert (await cold.get_access_token(grant.grant_id)).access_token == "at-0"
    assert store.gets == 1


async def test_g08_stale_serves_cached_and_refreshes_in_background(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, T - 1)
    token = await broker.get_access_token(grant.grant_id)
    assert (token.access_token, token.freshness) == ("at-0", Freshness.STALE)
    await broker.wait_idle()
    assert refresher.calls == 1
    fresh = await broker.get_access_token(grant.grant_id)
    assert (fresh.access_token, fresh.freshness) == ("at-1", Freshness.FRESH)
    assert refresher.calls == 1


@pytest.mark.parametrize("before", [1.0, 0.0, -100.0])
async def test_g08_invalid_blocks_for_a_refresh(
    broker: TokenBroker, refresher: FakeRefresher, clock: FakeClock, before: float
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, before)
    token = await broker.get_access_token(grant.grant_id)
    assert (token.access_token, token.freshness) == ("at-1", Freshness.FRESH)
    assert refresher.calls == 1


async def test_g08_wall_clock_step_neither_expires_nor_revives_cached_token(
    broker: TokenBroker, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    clock.set(clock.now() + 3600)  # wall clock stepped +1 h, monotonic unchanged
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-0"
    clock.set(clock.now() - 7200)  # and -1 h
    clock.advance(LIFETIME - 1)  # 1 s of real time left
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-1"
    assert refresher.calls == 1


async def test_g08_min_ttl_above_remaining_forces_a_refresh(
    broker: TokenBroker, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 900)  # FRESH for the default caller
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-0"
    token = await broker.get_access_token(grant.grant_id, min_ttl=1000)
    assert token.access_token == "at-1"
    assert refresher.calls == 1


async def test_g08_min_ttl_beyond_the_issued_lifetime_refreshes_once_per_threshold(
    broker: TokenBroker, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)  # the AS issues 3600 s tokens
    for _ in range(5):
        assert (await broker.get_access_token(grant.grant_id, min_ttl=4000)).access_token == "at-0"
    clock.advance(T + 1)
    for _ in range(5):
        assert (await broker.get_access_token(grant.grant_id, min_ttl=4000)).access_token == "at-1"
    assert refresher.calls == 1


async def test_negative_min_ttl_is_rejected(broker: TokenBroker, clock: FakeClock) -> None:
    grant = await add(broker, clock)
    with pytest.raises(InvalidArgument):
        await broker.get_access_token(grant.grant_id, min_ttl=-1)


async def test_unknown_grant_is_not_found(broker: TokenBroker) -> None:
    with pytest.raises(GrantNotFound):
        await broker.get_access_token("nope")


async def test_empty_grant_id_is_rejected(broker: TokenBroker, store: FakeGrantStore) -> None:
    with pytest.raises(InvalidArgument):
        await broker.get_access_token("")
    assert store.gets == 0


# --- G06 / G07: single flight ------------------------------------------------------------------


@pytest.mark.parametrize("callers", [200, 1000])
async def test_g06_concurrent_callers_on_an_invalid_token_share_one_refresh(
    broker: TokenBroker, refresher: FakeRefresher, clock: FakeClock, callers: int
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    refresher.gate = asyncio.Event()
    tasks = [asyncio.create_task(broker.get_access_token(grant.grant_id)) for _ in range(callers)]
    await refresher.entered.wait()
    refresher.gate.set()
    tokens = await asyncio.gather(*tasks)
    assert refresher.calls == 1
    assert {t.access_token for t in tokens} == {"at-1"}


@pytest.mark.parametrize("callers", [200, 1000])
async def test_g06_concurrent_callers_on_a_stale_token_start_one_background_refresh(
    broker: TokenBroker, refresher: FakeRefresher, clock: FakeClock, callers: int
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, T - 1)
    refresher.gate = asyncio.Event()
    tokens = await asyncio.gather(
        *(broker.get_access_token(grant.grant_id) for _ in range(callers))
    )
    assert {(t.access_token, t.freshness) for t in tokens} == {("at-0", Freshness.STALE)}
    refresher.gate.set()
    await broker.wait_idle()
    assert refresher.calls == 1
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-1"


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (AuthServerUnavailable("as down", status_code=503), AuthServerUnavailable),
        (InvalidGrant(status_code=400), ReauthorizationRequired),
        (TokenValidationError("sub changed"), TokenValidationError),
    ],
)
async def test_g06_failure_is_propagated_to_all_waiters(
    broker: TokenBroker,
    refresher: FakeRefresher,
    clock: FakeClock,
    error: Exception,
    raised: type[Exception],
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    refresher.gate = asyncio.Event()
    refresher.errors = [error]
    tasks = [asyncio.create_task(broker.get_access_token(grant.grant_id)) for _ in range(200)]
    await refresher.entered.wait()
    refresher.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert refresher.calls == 1
    assert all(isinstance(r, raised) for r in results)


async def test_g07_second_replica_rereads_after_the_lock_and_does_not_refresh(
    store: FakeGrantStore, clock: FakeClock
) -> None:
    refresher_a, refresher_b = FakeRefresher(clock), FakeRefresher(clock)
    a = make_broker(store, refresher_a, clock)
    b = make_broker(store, refresher_b, clock)
    grant = await add(a, clock)
    assert (await b.get_access_token(grant.grant_id)).access_token == "at-0"  # B has it cached
    to_expiry(clock, grant, 1)
    refresher_a.gate = asyncio.Event()
    task_a = asyncio.create_task(a.get_access_token(grant.grant_id))
    await refresher_a.entered.wait()  # A holds the store's refresh lock
    task_b = asyncio.create_task(b.get_access_token(grant.grant_id))
    refresher_a.gate.set()
    token_a, token_b = await asyncio.gather(task_a, task_b)
    assert token_a.access_token == token_b.access_token == "at-1"
    assert (refresher_a.calls, refresher_b.calls) == (1, 0)
    assert refresher_a.used == ["rt-0"]


# --- A05 / A06 / A08: failures -----------------------------------------------------------------


async def test_a05_invalid_grant_flags_the_grant_once_and_never_retries(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    refresher.errors = [InvalidGrant(status_code=400)]
    for _ in range(3):
        with pytest.raises(ReauthorizationRequired) as info:
            await broker.get_access_token(grant.grant_id)
        assert info.value.reason == "reauthorization_required"
    assert refresher.calls == 1
    stored = store.grants[grant.grant_id]
    assert stored.status is GrantStatus.REAUTHORIZATION_REQUIRED
    assert stored.last_error == "invalid_grant"
    assert stored.refresh_started_at is None
    assert [e for e in store.log if e[0] == "set_status"] == [
        ("set_status", grant.grant_id, "reauthorization_required", "invalid_grant")
    ]
    # another replica (cold cache) sees the status, and does not call the AS either
    other_refresher = FakeRefresher(clock)
    with pytest.raises(ReauthorizationRequired):
        await make_broker(store, other_refresher, clock).get_access_token(grant.grant_id)
    assert other_refresher.calls == 0


async def test_a05_invalid_grant_in_background_refresh_kills_the_grant(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, T - 1)
    refresher.errors = [InvalidGrant(status_code=400)]
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-0"
    await broker.wait_idle()
    with pytest.raises(ReauthorizationRequired):
        await broker.get_access_token(grant.grant_id)
    assert refresher.calls == 1


async def test_a05_grant_without_refresh_token_needs_reauthorization(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    tokens = dataclasses.replace(token_set(clock), refresh_token=None)
    grant = await broker.add_grant(tokens, label="svc", issuer="https://as", client_id="c")
    to_expiry(clock, grant, 1)
    with pytest.raises(ReauthorizationRequired):
        await broker.get_access_token(grant.grant_id)
    assert refresher.calls == 0
    assert store.grants[grant.grant_id].last_error == "no_refresh_token"


async def test_a06_as_down_serves_cached_until_expiry_then_retryable_error(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock, **NO_JITTER)
    grant = await add(broker, clock)
    refresher.errors = [AuthServerUnavailable("down", status_code=503) for _ in range(100)]
    to_expiry(clock, grant, T - 1)
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-0"
    await broker.wait_idle()
    assert ("record_error", grant.grant_id, "as_unavailable") in store.log
    assert store.grants[grant.grant_id].access_token == "at-0"
    # during the back-off (first >= 5 s) no request reaches the AS; the cached token is served
    clock.advance(4)
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-0"
    assert refresher.calls == 1
    # still valid: served (background attempts fail and back off)
    to_expiry(clock, grant, MIN_SERVE_TTL + 1)
    token = await broker.get_access_token(grant.grant_id)
    assert (token.access_token, token.freshness) == ("at-0", Freshness.STALE)
    await broker.wait_idle()
    # really expiring: the retryable error surfaces (UNAVAILABLE at the gRPC layer)
    to_expiry(clock, grant, MIN_SERVE_TTL)
    with pytest.raises(AuthServerUnavailable) as info:
        await broker.get_access_token(grant.grant_id)
    assert info.value.retryable
    # AS back: the next attempt after the back-off succeeds
    refresher.errors.clear()
    clock.advance(300)
    assert (await broker.get_access_token(grant.grant_id)).access_token.startswith("at-")
    assert store.grants[grant.grant_id].last_error is None
    assert store.grants[grant.grant_id].status is GrantStatus.ACTIVE


async def test_a06_retry_after_is_honoured_and_callers_fail_fast_meanwhile(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock, **NO_JITTER)
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    refresher.errors = [AuthServerUnavailable("429", status_code=429, retry_after=30)]
    with pytest.raises(AuthServerUnavailable):
        await broker.get_access_token(grant.grant_id)
    clock.advance(29)
    with pytest.raises(AuthServerUnavailable):
        await broker.get_access_token(grant.grant_id)
    assert refresher.calls == 1
    clock.advance(2)
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-2"
    assert refresher.calls == 2


async def test_a06_min_ttl_caller_gets_cached_token_while_as_is_down(
    broker: TokenBroker, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 900)
    refresher.errors = [AuthServerUnavailable("down")]
    token = await broker.get_access_token(grant.grant_id, min_ttl=1000)
    assert token.access_token == "at-0"
    assert refresher.calls == 1


async def test_a08a_old_refresh_token_is_kept_when_none_is_returned(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    refresher.rotate = False
    for expected in ("at-1", "at-2"):
        clock.advance(LIFETIME - 1)
        assert (await broker.get_access_token(grant.grant_id)).access_token == expected
    assert refresher.used == ["rt-0", "rt-0"]
    assert store.grants[grant.grant_id].refresh_token == "rt-0"


async def test_a08b_new_refresh_token_is_durable_before_the_access_token_leaves(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-1"
    assert store.ops(grant.grant_id) == [
        "create",
        "lock",
        "mark_refresh_started",
        "rotate",
        "unlock",
    ]
    assert ("rotate", grant.grant_id, "rt-1") in store.log
    clock.advance(LIFETIME - 1)
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-2"
    assert refresher.used == ["rt-0", "rt-1"]  # the old refresh token is never sent again
    assert refresher.subjects == ["did:key:zUser", "did:key:zUser"]


async def test_a08b_unpersisted_access_token_is_never_handed_out(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    store.fail["rotate"] = StoreError("disk full")
    with pytest.raises(StoreError):
        await broker.get_access_token(grant.grant_id)
    assert refresher.calls == 1
    assert store.grants[grant.grant_id].access_token == "at-0"
    with pytest.raises(StoreError):  # backing off: fails fast, never "at-1"
        await broker.get_access_token(grant.grant_id)


async def test_g04_refresh_result_the_store_could_not_write_is_written_before_asking_again(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    store.fail["rotate"] = StoreError("disk full")
    with pytest.raises(StoreError):
        await broker.get_access_token(grant.grant_id)
    clock.advance(6)  # past the first back-off; the old token has expired meanwhile
    token = await broker.get_access_token(grant.grant_id)
    assert token.access_token == "at-1"
    assert refresher.used == ["rt-0"]  # the AS was not asked again
    assert store.grants[grant.grant_id].refresh_token == "rt-1"
    clock.advance(LIFETIME - 1)
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-2"
    assert refresher.used == ["rt-0", "rt-1"]


async def test_g04_unwritten_result_is_dropped_when_another_replica_rotated(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    store.fail["rotate"] = StoreError("db down")
    with pytest.raises(StoreError):
        await broker.get_access_token(grant.grant_id)
    other = FakeRefresher(clock)
    other.calls = 10  # its tokens are at-11 / rt-11
    await make_broker(store, other, clock).get_access_token(grant.grant_id)
    clock.advance(6)
    assert (await broker.get_access_token(grant.grant_id)).access_token == "at-11"
    assert store.grants[grant.grant_id].refresh_token == "rt-11"
    assert refresher.calls == 1


async def test_a08c_rejected_refresh_response_leaves_the_grant_unchanged(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    refresher.errors = [TokenValidationError("id_token sub differs")]
    with pytest.raises(TokenValidationError):
        await broker.get_access_token(grant.grant_id)
    stored = store.grants[grant.grant_id]
    assert (stored.access_token, stored.refresh_token, stored.version, stored.status) == (
        "at-0",
        "rt-0",
        1,
        GrantStatus.ACTIVE,
    )
    assert "rotate" not in store.ops(grant.grant_id)
    assert "set_status" not in store.ops(grant.grant_id)


# --- F05: cancellation -------------------------------------------------------------------------


async def test_f05_cancelled_caller_does_not_cancel_the_refresh(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    to_expiry(clock, grant, 1)
    refresher.gate = asyncio.Event()
    caller = asyncio.create_task(broker.get_access_token(grant.grant_id))
    await refresher.entered.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    refresher.gate.set()
    await broker.wait_idle()
    assert store.grants[grant.grant_id].access_token == "at-1"
    gets = store.gets
    token = await broker.get_access_token(grant.grant_id)
    assert (token.access_token, token.freshness) == ("at-1", Freshness.FRESH)
    assert store.gets == gets  # a cache hit
    assert refresher.calls == 1


# --- grants ------------------------------------------------------------------------------------


async def test_add_grant_stores_and_lists(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    ids = iter(["g1", "g2"])
    broker = make_broker(store, refresher, clock, id_factory=lambda: next(ids))
    one = await add(broker, clock, label="a")
    two = await add(broker, clock, label="b")
    assert (one.grant_id, two.grant_id) == ("g1", "g2")
    assert one.status is GrantStatus.ACTIVE
    assert one.subject == "did:key:zUser"
    assert (await broker.get_grant("g1")).refresh_token == "rt-0"
    assert [g.grant_id for g in await broker.list_grants("b")] == ["g2"]
    assert len(await broker.list_grants()) == 2


async def test_add_grant_default_ids_are_random(broker: TokenBroker, clock: FakeClock) -> None:
    one, two = await add(broker, clock), await add(broker, clock)
    assert one.grant_id != two.grant_id
    assert len(one.grant_id) >= 21


async def test_add_grant_retries_an_id_collision(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    ids = iter(["same", "same", "other"])
    broker = make_broker(store, refresher, clock, id_factory=lambda: next(ids))
    await add(broker, clock)
    assert (await add(broker, clock)).grant_id == "other"


async def test_add_grant_gives_up_after_repeated_collisions(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    broker = make_broker(store, refresher, clock, id_factory=lambda: "same")
    await add(broker, clock)
    with pytest.raises(GrantExists):
        await add(broker, clock)
    assert len(store.grants) == 1


@pytest.mark.parametrize("field", ["label", "issuer", "client_id"])
async def test_add_grant_rejects_empty_fields(
    broker: TokenBroker, store: FakeGrantStore, clock: FakeClock, field: str
) -> None:
    kwargs = {"label": "svc", "issuer": "https://as", "client_id": "c", field: ""}
    with pytest.raises(InvalidArgument):
        await broker.add_grant(token_set(clock), **kwargs)
    assert store.grants == {}


async def test_add_grant_rejects_tokens_without_subject(
    broker: TokenBroker, store: FakeGrantStore, clock: FakeClock
) -> None:
    tokens = dataclasses.replace(token_set(clock), id_claims={})
    with pytest.raises(InvalidArgument):
        await broker.add_grant(tokens, label="svc", issuer="https://as", client_id="c")
    assert store.grants == {}


async def test_revoke_grant_stops_serving_everywhere(
    broker: TokenBroker, store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    grant = await add(broker, clock)
    revoked = await broker.revoke_grant(grant.grant_id)
    assert revoked.status is GrantStatus.REVOKED
    with pytest.raises(GrantRevoked) as info:
        await broker.get_access_token(grant.grant_id)
    assert info.value.reason == "grant_revoked"
    assert isinstance(info.value, ReauthorizationRequired)  # FAILED_PRECONDITION family
    with pytest.raises(GrantRevoked):
        await make_broker(store, refresher, clock).get_access_token(grant.grant_id)
    assert refresher.calls == 0


async def test_revoke_unknown_grant_is_not_found(broker: TokenBroker) -> None:
    with pytest.raises(GrantNotFound):
        await broker.revoke_grant("nope")


async def test_invalid_constructor_arguments_are_rejected(
    store: FakeGrantStore, refresher: FakeRefresher, clock: FakeClock
) -> None:
    invalid: list[Callable[[], object]] = [
        lambda: RefreshPolicy(threshold=0),
        lambda: RefreshPolicy(min_serve_ttl=-1),
        lambda: RefreshPolicy(jitter=1.0),
        lambda: make_broker(store, refresher, clock, watch_queue_size=0),
        lambda: make_broker(
            store, refresher, clock, backoff=dataclasses.replace(REFRESH_BACKOFF, initial=0)
        ),
        lambda: BackgroundPolicy(interval=0),
        lambda: BackgroundPolicy(concurrency=0),
    ]
    for make in invalid:
        with pytest.raises(InvalidArgument):
            make()


async def test_broker_serves_the_grpc_port_and_is_the_login_grant_sink(
    broker: TokenBroker, clock: FakeClock
) -> None:
    """Typed against broker.server.ports.TokenService and broker.login.ports.GrantSink (mypy
    checks the assignment; the calls check the behaviour through those interfaces)."""
    from broker.login.ports import GrantSink
    from broker.server.ports import TokenService as ServerPort

    sink: GrantSink = broker
    port: ServerPort = broker
    grant = await sink.add_grant(
        token_set(clock), label="svc", issuer="https://as", client_id="did:key:zClient"
    )
    view = await port.get_access_token(grant.grant_id, min_ttl=0)
    assert (view.access_token, view.token_type, view.grant_id) == ("at-0", "Bearer", grant.grant_id)
    assert [g.grant_id for g in await port.list_grants("svc")] == [grant.grant_id]
    stream = port.watch(grant.grant_id)
    assert (await anext(aiter(stream))).access_token == "at-0"
    assert inspect.isasyncgen(stream)
    await stream.aclose()
