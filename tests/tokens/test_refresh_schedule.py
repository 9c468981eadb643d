"""The refresh schedule derived from token lifetimes, retries bounded by the refresh token's
life, and the outage budget (issue 9, section 2). Fake clock throughout."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from broker.app.health import resilience_gauges
from broker.errors import AuthServerUnavailable, InvalidGrant, ReauthorizationRequired
from broker.keys.soft import SoftSealer
from broker.oauth.skew import SkewMonitor
from broker.oauth.token_endpoint import parse_refresh_expires_in
from broker.oauth.types import TokenSet
from broker.tokens.broker import TokenBroker
from broker.tokens.model import GrantStatus
from broker.tokens.schedule import (
    LifetimeKind,
    RefreshSchedule,
    RefreshTokenLifetime,
    jitter_unit,
    outage_budget,
)
from broker.tokens.settings import BackgroundPolicy, RefreshPolicy, Seams
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.fakes import FakeGrantStore, token_set

L = 3600.0  # DOME v2: access and refresh token both live an hour
THRESHOLD = 225.0
MARGIN = 120.0
INTERVAL = 15.0  # background pass every 15 s of fake time
ACCESS = RefreshTokenLifetime(LifetimeKind.ACCESS)
POLICY = RefreshPolicy(
    threshold=THRESHOLD, min_serve_ttl=30.0, fraction=0.5, retry_margin=MARGIN, lifetime=ACCESS
)


class DomeRefresher:
    """A DOME v2-like AS: every refresh token lives as long as the access token issued with
    it; a dead one gets invalid_grant. ``down_until``: refreshes fail (retryably) before it."""

    def __init__(self, clock: FakeClock, *, lifetime: float = L) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.down_from = 0.0
        self.down_until = 0.0
        self.expiry: dict[str, float] = {}
        self.attempts: list[float] = []
        self.issued = 0

    def grant_tokens(self, *, refresh_expires_in: float | None = None) -> TokenSet:
        return self._issue(refresh_expires_in)

    def _issue(self, refresh_expires_in: float | None = None) -> TokenSet:
        now = self.clock.now()
        self.issued += 1
        rt = f"rt-{self.issued}"
        self.expiry[rt] = now + (refresh_expires_in or self.lifetime)
        return TokenSet(
            access_token=f"at-{self.issued}",
            token_type="Bearer",
            expires_at=now + self.lifetime,
            received_at=now,
            scope="openid",
            refresh_token=rt,
            id_claims={"sub": "did:key:zUser"},
            refresh_expires_at=None if refresh_expires_in is None else now + refresh_expires_in,
        )

    async def refresh(self, refresh_token: str, *, subject: str) -> TokenSet:
        now = self.clock.now()
        self.attempts.append(now)
        if self.down_from <= now < self.down_until:
            raise AuthServerUnavailable("down")
        if now >= self.expiry[refresh_token]:
            raise InvalidGrant(status_code=400)
        return self._issue()


def make(
    store: FakeGrantStore | SqliteGrantStore,
    refresher: DomeRefresher,
    clock: FakeClock,
    *,
    id_factory: Callable[[], str] | None = None,
    **policy: Any,
) -> TokenBroker:
    """A broker with this file's schedule; ``policy``: RefreshPolicy fields to change."""
    seams = Seams(rng=random.Random(7))
    if id_factory is not None:
        seams = dataclasses.replace(seams, id_factory=id_factory)
    return TokenBroker(
        store,
        refresher,
        clock,
        refresh=dataclasses.replace(POLICY, **policy),
        background=BackgroundPolicy(interval=INTERVAL),
        seams=seams,
    )


async def add(broker: TokenBroker, tokens: TokenSet) -> str:
    grant = await broker.add_grant(
        tokens, label="svc", issuer="https://as.example", client_id="did:key:zClient"
    )
    return grant.grant_id


async def run_passes(broker: TokenBroker, clock: FakeClock, until: float) -> None:
    while clock.now() < until:
        clock.advance(INTERVAL)
        await broker.refresh_due_now()


# --- the pure schedule ---------------------------------------------------------------------------


def test_due_is_at_the_fraction_within_the_jitter_and_stable_per_grant() -> None:
    schedule = RefreshSchedule(THRESHOLD, jitter=0.1, fraction=0.5)
    dues = []
    for n in range(500):
        due = schedule.due_at(f"g-{n}", 1, issued_at=0.0, expires_at=L)
        assert 0.45 * L <= due <= 0.55 * L
        assert due == schedule.due_at(f"g-{n}", 1, issued_at=0.0, expires_at=L)  # stable
        dues.append(due)
    assert min(dues) < 0.46 * L and max(dues) > 0.54 * L  # the jitter uses its whole range
    assert len(set(dues)) == len(dues)
    assert schedule.due_at("g-0", 2, issued_at=0.0, expires_at=L) != dues[0]  # per version


def test_due_is_never_later_than_the_threshold() -> None:
    schedule = RefreshSchedule(THRESHOLD, jitter=0.1, fraction=0.95)
    capped = 0
    for n in range(200):
        latest = schedule.threshold_due(f"g-{n}", 1, expires_at=L)
        assert latest <= L - THRESHOLD * 0.9
        due = schedule.due_at(f"g-{n}", 1, issued_at=0.0, expires_at=L)
        assert due <= latest
        capped += due == latest
    assert 0 < capped < 200  # 95 % +- 9.5 % of an hour straddles the threshold
    short = RefreshSchedule(THRESHOLD, jitter=0.0, fraction=0.5)  # 300 s tokens: 150 > 75
    assert short.due_at("g", 1, issued_at=0.0, expires_at=300.0) == 300.0 - THRESHOLD


def test_without_fraction_or_issue_time_the_threshold_alone_decides() -> None:
    old = RefreshSchedule(THRESHOLD, jitter=0.1, fraction=None)
    new = RefreshSchedule(THRESHOLD, jitter=0.1, fraction=0.5)
    assert old.due_at("g", 1, issued_at=0.0, expires_at=L) == old.threshold_due(
        "g", 1, expires_at=L
    )
    assert new.due_at("g", 1, issued_at=None, expires_at=L) == new.threshold_due(
        "g", 1, expires_at=L
    )


def test_next_attempt_never_skips_the_retry_deadline() -> None:
    schedule = RefreshSchedule(THRESHOLD, retry_margin=MARGIN)
    deadline = L - MARGIN
    assert schedule.next_attempt(3400.0, 300.0, deadline) == deadline
    assert schedule.next_attempt(3400.0, 5.0, deadline) == 3405.0
    assert schedule.next_attempt(deadline + 1, 300.0, deadline) == deadline + 301  # past it
    assert schedule.next_attempt(3400.0, 300.0, None) == 3700.0


def test_lifetime_setting_and_outage_budget() -> None:
    assert ACCESS.expiry(issued_at=10.0, access_expires_at=3610.0) == 3610.0
    assert RefreshTokenLifetime.of(86400).expiry(issued_at=10.0, access_expires_at=0) == 86410.0
    assert RefreshTokenLifetime.of("unknown").expiry(issued_at=10.0, access_expires_at=1) is None
    assert outage_budget([None, 500.0, 300.0], 100.0) == 200.0
    assert outage_budget([None], 100.0) is None
    assert 0 <= jitter_unit("g", 1) < 1


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (1800, 1800),
        (None, None),
        (0, None),  # Keycloak's offline tokens: no expiry
        (-5, None),
        ("1800", None),
        (1800.0, None),
        (True, None),
        (10**12, None),
    ],
)
def test_refresh_expires_in_is_taken_only_as_a_positive_integer(
    value: object, parsed: int | None
) -> None:
    assert parse_refresh_expires_in(value) == parsed


# --- the token core --------------------------------------------------------------------------------


async def test_background_refresh_happens_at_the_fraction_not_at_the_threshold() -> None:
    clock = FakeClock()
    refresher = DomeRefresher(clock)
    broker = make(FakeGrantStore(clock), refresher, clock)
    start = clock.now()
    grant_id = await add(broker, refresher.grant_tokens())
    await run_passes(broker, clock, start + 0.45 * L - INTERVAL)
    assert refresher.attempts == []
    await run_passes(broker, clock, start + 0.55 * L + INTERVAL)
    assert len(refresher.attempts) == 1
    due = RefreshSchedule(THRESHOLD, 0.1, 0.5).due_at(
        grant_id, 1, issued_at=start, expires_at=start + L
    )
    assert due <= refresher.attempts[0] < due + INTERVAL


async def test_the_schedule_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    refresher = DomeRefresher(clock)
    sealer = SoftSealer()
    store = await SqliteGrantStore.connect(str(tmp_path / "g.db"), sealer, clock)
    try:
        start = clock.now()
        grant_id = await add(make(store, refresher, clock), refresher.grant_tokens())
        stored = await store.get(grant_id)
        assert (stored.access_issued_at, stored.refresh_expires_at) == (start, start + L)
    finally:
        await store.close()
    store = await SqliteGrantStore.connect(str(tmp_path / "g.db"), sealer, clock)
    try:
        fresh_process = make(store, refresher, clock)  # knows nothing of the lifetime
        await run_passes(fresh_process, clock, start + 0.56 * L + INTERVAL)
        assert len(refresher.attempts) == 1
        assert refresher.attempts[0] < start + 0.56 * L + INTERVAL
        assert fresh_process.outage_budget() == pytest.approx(
            refresher.attempts[0] + L - clock.now(), abs=INTERVAL
        )
    finally:
        await store.close()


SHORT_MARGIN = 30.0
BACK_AT = L - 40.0  # the AS is back 40 s before the refresh token dies, 10 s before the deadline


async def run_outage(**kwargs: Any) -> tuple[DomeRefresher, TokenBroker, str, float]:
    """The AS goes down with the first grant's tokens and is back ``BACK_AT`` later: only a
    refresh between then and the refresh token's death (3600 s) saves the grant."""
    clock = FakeClock()
    refresher = DomeRefresher(clock)
    store = FakeGrantStore(clock)
    options: dict[str, Any] = {"retry_margin": SHORT_MARGIN, "id_factory": lambda: "g-1"}
    options.update(kwargs)
    broker = make(store, refresher, clock, **options)
    start = clock.now()
    grant_id = await add(broker, refresher.grant_tokens())
    refresher.down_until = start + BACK_AT
    await run_passes(broker, clock, start + L + 300.0)
    return refresher, broker, grant_id, start


async def test_failed_refreshes_are_retried_until_shortly_before_the_refresh_token_dies() -> None:
    refresher, broker, grant_id, start = await run_outage()
    before_death = [t - start for t in refresher.attempts if t - start < L]
    assert before_death[0] >= 0.45 * L  # first attempt at the fraction
    assert before_death[-1] >= L - SHORT_MARGIN  # the back-off did not skip the last stretch
    assert (await broker.get_access_token(grant_id)).access_token != "at-1"
    assert broker.grants_in_last_retry_window() == 0


@pytest.mark.parametrize("fraction", [None, 0.5])
async def test_an_outage_longer_than_the_threshold_kills_only_the_threshold_schedule(
    fraction: float | None,
) -> None:
    """The AS is down from 60 s before the threshold point until 300 s after the first
    tokens expire (585 s > 225 s threshold)."""
    clock = FakeClock()
    refresher = DomeRefresher(clock)
    broker = make(
        FakeGrantStore(clock), refresher, clock, fraction=fraction, id_factory=lambda: "g"
    )
    start = clock.now()
    grant_id = await add(broker, refresher.grant_tokens())
    refresher.down_from, refresher.down_until = start + L - THRESHOLD - 60, start + L + 300
    await run_passes(broker, clock, start + L + 600)
    if fraction is None:
        with pytest.raises(ReauthorizationRequired):
            await broker.get_access_token(grant_id)
    else:
        assert (await broker.get_access_token(grant_id)).access_token not in ("at-1", "at-2")


async def test_refresh_expires_in_from_the_as_wins_over_the_setting() -> None:
    clock = FakeClock()
    refresher = DomeRefresher(clock)
    store = FakeGrantStore(clock)
    broker = make(store, refresher, clock)  # setting: "access" (3600 s)
    grant_id = await add(broker, refresher.grant_tokens(refresh_expires_in=7200))
    assert store.grants[grant_id].refresh_expires_at == clock.now() + 7200
    assert broker.outage_budget() == 7200
    clock.advance(1000)
    assert broker.outage_budget() == 6200


async def test_a_refresh_without_a_new_refresh_token_keeps_the_old_expiry() -> None:
    clock = FakeClock()
    refresher = DomeRefresher(clock)
    store = FakeGrantStore(clock)
    broker = make(store, refresher, clock, lifetime=RefreshTokenLifetime.of(86400))
    start = clock.now()
    grant_id = await add(broker, refresher.grant_tokens())
    assert store.grants[grant_id].refresh_expires_at == start + 86400

    async def no_rotation(refresh_token: str, *, subject: str) -> TokenSet:
        now = clock.now()
        return TokenSet("at-x", "Bearer", now + L, now, "openid", id_claims={"sub": subject})

    refresher.refresh = no_rotation  # type: ignore[method-assign]
    await run_passes(broker, clock, start + 0.56 * L)
    stored = store.grants[grant_id]
    assert stored.version == 2 and stored.refresh_expires_at == start + 86400


async def test_gauges_outage_budget_and_grants_in_last_retry_window() -> None:
    clock = FakeClock()
    refresher = DomeRefresher(clock)
    broker = make(FakeGrantStore(clock), refresher, clock)
    assert broker.outage_budget() is None
    start = clock.now()
    a = await add(broker, refresher.grant_tokens())
    clock.advance(100)
    await add(broker, refresher.grant_tokens())
    assert broker.outage_budget() == L - 100  # a's refresh token dies first
    refresher.down_until = start + 10 * L
    await run_passes(broker, clock, start + L - MARGIN - THRESHOLD - INTERVAL)
    assert broker.grants_in_last_retry_window() == 0  # failing, but not yet in the window
    await run_passes(broker, clock, start + L - MARGIN - THRESHOLD + INTERVAL)
    assert broker.grants_in_last_retry_window() == 1  # a; b's window starts 100 s later
    await run_passes(broker, clock, start + L - MARGIN - THRESHOLD + 100 + INTERVAL)
    assert broker.grants_in_last_retry_window() == 2
    assert broker.outage_budget() == pytest.approx(start + L - clock.now())
    refresher.down_until = 0.0
    # Each failing grant is retried at the latest at its deadline (refresh-token expiry minus
    # the margin; b's is 100 s after a's), whatever the randomised back-off drew.
    await run_passes(broker, clock, start + 100 + L - MARGIN + INTERVAL)
    assert broker.grants_in_last_retry_window() == 0
    assert broker.outage_budget() is not None and broker.outage_budget() > L - 400  # type: ignore[operator]
    assert a in [g.grant_id for g in await broker.list_grants()]


async def test_unknown_lifetime_contributes_no_budget() -> None:
    clock = FakeClock()
    refresher = DomeRefresher(clock)
    broker = make(
        FakeGrantStore(clock),
        refresher,
        clock,
        lifetime=RefreshTokenLifetime(LifetimeKind.UNKNOWN),
    )
    await add(broker, dataclasses.replace(token_set(clock), refresh_expires_at=None))
    assert broker.outage_budget() is None


async def test_sqlite_expiries_read_clear_columns_of_active_grants(tmp_path: Path) -> None:
    clock = FakeClock()
    refresher = DomeRefresher(clock)
    store = await SqliteGrantStore.connect(str(tmp_path / "g.db"), SoftSealer(), clock)
    try:
        broker = make(store, refresher, clock)
        live = await add(broker, refresher.grant_tokens())
        dead = await add(broker, refresher.grant_tokens(refresh_expires_in=50))
        await store.set_status(dead, GrantStatus.REVOKED, reason="revoked")
        (only,) = await store.expiries()
        assert (only.grant_id, only.refresh_expires_at) == (live, clock.now() + L)
        assert only.access_issued_at == clock.now()
    finally:
        await store.close()


async def test_outage_budget_gauges_are_exported_by_the_service_wiring() -> None:
    clock = FakeClock()
    refresher = DomeRefresher(clock)
    broker = make(FakeGrantStore(clock), refresher, clock)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    resilience_gauges(provider, SkewMonitor(clock, alarm_threshold=60.0), broker)
    await add(broker, refresher.grant_tokens())
    clock.advance(600)
    data = reader.get_metrics_data()
    assert data is not None
    values = {
        (metric.name, metric.unit): [p.value for p in metric.data.data_points]  # type: ignore[union-attr]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert values[("broker.grants.outage_budget", "s")] == [L - 600]
    assert values[("broker.grants.last_retry_window", "{grant}")] == [0]
    provider.shutdown()
