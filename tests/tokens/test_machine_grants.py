"""Machine grants in the token core: created idempotently under a stable id, renewed by a new
client credentials request (no refresh token) in the same single flight, schedule and back-off
as a refresh; rejections are not retryable and do not kill the grant. (The kind's round trip
in every store is in test_store_contract.)"""

from __future__ import annotations

import asyncio
import random

import pytest

from broker.errors import (
    AuthServerUnavailable,
    BrokerError,
    CredentialError,
    GrantNotFound,
    MachineGrantRejected,
)
from broker.oauth.types import TokenSet
from broker.tokens.broker import TokenBroker
from broker.tokens.freshness import REFRESH_THRESHOLD
from broker.tokens.machine import MachineGrantSpec, machine_grant_id
from broker.tokens.model import GrantKind, GrantStatus
from broker.tokens.settings import Seams
from broker.tokens.stores.base import GrantStore
from broker.tokens.stores.memory import MemoryGrantStore
from tests.clock import FakeClock
from tests.tokens.fakes import FakeRefresher

LIFETIME = 3600.0
ISSUER = "https://as.example"
DID = "did:key:zDnaeMachine"
SPEC = MachineGrantSpec(
    label="billing", scope="machine learcredential", issuer=ISSUER, client_id=DID
)


class FakeMachine:
    """A MachineTokenSource: counts acquisitions; ``fail`` makes the next ones raise."""

    def __init__(self, clock: FakeClock, *, lifetime: float = LIFETIME) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.scopes: list[str] = []
        self.fail: BrokerError | None = None
        self.gate: asyncio.Event | None = None

    async def acquire(self, *, label: str, scope: str) -> TokenSet:
        self.calls += 1
        self.scopes.append(scope)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        now = self.clock.now()
        return TokenSet(
            access_token=f"mat-{self.calls}",
            token_type="Bearer",
            expires_at=now + self.lifetime,
            received_at=now,
            scope=scope,
        )


def machine_broker(store: GrantStore, clock: FakeClock, machine: FakeMachine) -> TokenBroker:
    return TokenBroker(
        store,
        FakeRefresher(clock, lifetime=LIFETIME),
        clock,
        seams=Seams(rng=random.Random(7)),
        machine=machine,
    )


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


def test_machine_grant_id_is_stable_and_per_deployment() -> None:
    first = machine_grant_id(ISSUER, DID, "billing")
    assert first == machine_grant_id(ISSUER, DID, "billing") == SPEC.grant_id
    assert first.startswith("m2m-") and len(first) == 26
    assert first != machine_grant_id(ISSUER, DID, "other")
    assert first != machine_grant_id("https://other.example", DID, "billing")


async def test_ensure_creates_once_with_a_stable_id(fake_clock: FakeClock) -> None:
    store = MemoryGrantStore(fake_clock)
    machine = FakeMachine(fake_clock)
    grant = await machine_broker(store, fake_clock, machine).ensure_machine_grant(SPEC)
    assert grant.grant_id == SPEC.grant_id
    assert (grant.kind, grant.subject, grant.refresh_token) == (GrantKind.MACHINE, DID, None)
    assert machine.scopes == ["machine learcredential"]
    # A restart (a new token core on the same store) finds it: no second request.
    again = await machine_broker(store, fake_clock, machine).ensure_machine_grant(SPEC)
    assert again.grant_id == grant.grant_id and machine.calls == 1
    assert [g.grant_id for g in await store.list(label="billing")] == [grant.grant_id]


async def test_g06_first_get_of_a_configured_machine_grant_creates_it_once(
    fake_clock: FakeClock,
) -> None:
    store = MemoryGrantStore(fake_clock)
    machine = FakeMachine(fake_clock)
    machine.gate = asyncio.Event()
    broker = machine_broker(store, fake_clock, machine)
    grant_id = broker.register_machine_grant(SPEC)
    callers = [asyncio.create_task(broker.get_access_token(grant_id)) for _ in range(50)]
    for _ in range(20):
        await asyncio.sleep(0)
    machine.gate.set()
    tokens = await asyncio.gather(*callers)
    assert {t.access_token for t in tokens} == {"mat-1"}
    assert machine.calls == 1


async def test_g06_machine_grant_reacquires_before_expiry_once_for_50_callers(
    fake_clock: FakeClock,
) -> None:
    """Fails before the change: a grant without a refresh token was flagged dead."""
    store = MemoryGrantStore(fake_clock)
    machine = FakeMachine(fake_clock)
    broker = machine_broker(store, fake_clock, machine)
    grant = await broker.ensure_machine_grant(SPEC)
    fake_clock.advance(grant.access_expires_at - fake_clock.now() - 10)  # INVALID: must renew
    machine.gate = asyncio.Event()
    callers = [asyncio.create_task(broker.get_access_token(grant.grant_id)) for _ in range(50)]
    for _ in range(20):
        await asyncio.sleep(0)
    machine.gate.set()
    tokens = await asyncio.gather(*callers)
    assert {t.access_token for t in tokens} == {"mat-2"}
    assert machine.calls == 2
    stored = await store.get(grant.grant_id)
    assert (stored.status, stored.kind, stored.version) == (
        GrantStatus.ACTIVE,
        GrantKind.MACHINE,
        2,
    )
    assert stored.refresh_token is None


async def test_machine_grant_is_renewed_by_the_background_pass(fake_clock: FakeClock) -> None:
    store = MemoryGrantStore(fake_clock)
    machine = FakeMachine(fake_clock)
    broker = machine_broker(store, fake_clock, machine)
    grant = await broker.ensure_machine_grant(SPEC)
    assert await broker.refresh_due_now() == 0
    fake_clock.advance(LIFETIME - REFRESH_THRESHOLD / 2)  # past the due point, jitter or not
    assert await broker.refresh_due_now() == 1
    await broker.wait_idle()
    assert machine.calls == 2
    assert (await broker.get_access_token(grant.grant_id)).access_token == "mat-2"
    assert broker.outage_budget() is None  # no refresh token that could die in an outage


@pytest.mark.parametrize(
    "error",
    [
        MachineGrantRejected("m2m_rejected", status_code=403),
        CredentialError("credential expired", reason="expired"),
    ],
    ids=["m2m_rejected", "credential_expired"],
)
async def test_a05_rejection_is_not_retryable_backs_off_and_keeps_the_grant(
    fake_clock: FakeClock, error: BrokerError
) -> None:
    store = MemoryGrantStore(fake_clock)
    machine = FakeMachine(fake_clock)
    broker = machine_broker(store, fake_clock, machine)
    grant = await broker.ensure_machine_grant(SPEC)
    fake_clock.advance(LIFETIME + 1)  # expired: a blocking renewal
    machine.fail = error
    with pytest.raises(type(error)) as caught:
        await broker.get_access_token(grant.grant_id)
    assert not caught.value.retryable and caught.value.reason == error.reason
    with pytest.raises(type(error)):  # in the back-off: fails fast, nothing sent
        await broker.get_access_token(grant.grant_id)
    assert machine.calls == 2
    stored = await store.get(grant.grant_id)
    assert (stored.status, stored.last_error) == (GrantStatus.ACTIVE, error.reason)
    # Fixed (a trusted issuer, a new credential): the next attempt after the back-off works.
    machine.fail = None
    fake_clock.advance(600)
    assert (await broker.get_access_token(grant.grant_id)).access_token == "mat-3"


async def test_a06_outage_keeps_serving_the_valid_machine_token(fake_clock: FakeClock) -> None:
    store = MemoryGrantStore(fake_clock)
    machine = FakeMachine(fake_clock)
    broker = machine_broker(store, fake_clock, machine)
    grant = await broker.ensure_machine_grant(SPEC)
    fake_clock.advance(LIFETIME - 100)  # below the threshold: wants a renewal
    machine.fail = AuthServerUnavailable("down", status_code=503)
    token = await broker.get_access_token(grant.grant_id, min_ttl=REFRESH_THRESHOLD)
    assert token.access_token == "mat-1"
    assert machine.calls == 2


async def test_unconfigured_missing_grant_is_still_not_found(fake_clock: FakeClock) -> None:
    broker = machine_broker(MemoryGrantStore(fake_clock), fake_clock, FakeMachine(fake_clock))
    with pytest.raises(GrantNotFound):
        await broker.get_access_token(machine_grant_id(ISSUER, DID, "not-configured"))
