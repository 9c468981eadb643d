"""Key rotation (issue 10 section 4): a store records several identities, and each grant is
refreshed with the key of the identity that created it.

The ledger cases run against the memory, SQLite and PostgreSQL stores (the binding
contract's ``opener``); the refresh cases against the token core with one fake refresher per
identity.
"""

from __future__ import annotations

import random

import pytest

from broker.errors import DeploymentMismatch, InvalidArgument
from broker.tokens.broker import TokenBroker
from broker.tokens.model import GrantKind, GrantStatus
from broker.tokens.settings import Identities, Seams
from broker.tokens.stores.deployment import (
    DeploymentIdentity,
    IdentityRole,
    IdentityState,
    RecordedHow,
)
from broker.tokens.stores.identities import IdentityRefresher
from broker.tokens.stores.memory import MemoryGrantStore
from tests.clock import FakeClock
from tests.tokens.fakes import FakeRefresher
from tests.tokens.stores import helpers
from tests.tokens.stores.helpers import OURS, Opener
from tests.tokens.test_broker_deployment import expired_grant

NEW = DeploymentIdentity(
    issuer=OURS.issuer, client_id="did:key:zDnaeNewKey", did="did:key:zDnaeNewKey"
)
opener = helpers.opener  # the memory / SQLite / PostgreSQL fixture

NEW_URI = "pkcs11:token=broker;object=client-2027;id=%02;type=private"


async def test_ledger_records_a_prepared_identity_and_its_state(opener: Opener) -> None:
    store = await opener(identity=OURS)
    added = await store.add_identity(NEW, state=IdentityState.PREPARED, key_uri=NEW_URI)
    assert (added.role, added.how, added.state) == (
        IdentityRole.ADDED,
        RecordedHow.CEREMONY,
        IdentityState.PREPARED,
    )
    with pytest.raises(InvalidArgument):
        await store.add_identity(NEW, state=IdentityState.PREPARED, key_uri=NEW_URI)
    primary = await store.set_identity(OURS, key_uri="pkcs11:token=broker;object=old")
    assert primary.state is IdentityState.ACTIVE  # every identity before rotations is active
    await store.set_identity(NEW, state=IdentityState.ACTIVE)
    await store.set_identity(OURS, state=IdentityState.RETIRING)
    await store.close()

    again = await opener(identity=NEW)  # the new key configured: recorded, so it opens
    recorded = {r.identity: r for r in await again.identities()}
    assert recorded[OURS].role is IdentityRole.PRIMARY
    assert recorded[OURS].state is IdentityState.RETIRING
    assert recorded[OURS].key_uri == "pkcs11:token=broker;object=old"
    assert recorded[NEW].state is IdentityState.ACTIVE and recorded[NEW].key_uri == NEW_URI
    with pytest.raises(InvalidArgument):
        await again.set_identity(
            DeploymentIdentity(OURS.issuer, "did:key:zDnaeNobody", "did:key:zDnaeNobody"),
            state=IdentityState.RETIRED,
        )


async def test_a_retired_identity_never_opens_the_store_again(opener: Opener) -> None:
    store = await opener(identity=OURS)
    await store.add_identity(NEW, state=IdentityState.ACTIVE, key_uri=NEW_URI)
    await store.set_identity(OURS, state=IdentityState.RETIRED)
    await store.close()
    with pytest.raises(DeploymentMismatch) as info:
        await opener(identity=OURS)
    assert "retired" in str(info.value)


async def test_a_plain_restart_with_an_unrecorded_key_adds_no_identity(opener: Opener) -> None:
    store = await opener(identity=OURS)
    await store.close()
    with pytest.raises(DeploymentMismatch):
        await opener(identity=NEW)  # only `broker keys rotate prepare` records a new one
    check = await opener()
    assert [r.identity for r in await check.identities()] == [OURS]


def _broker(
    clock: FakeClock, store: MemoryGrantStore, old: FakeRefresher, new: FakeRefresher
) -> TokenBroker:
    """Serving after `rotate activate`: NEW is active, OURS still refreshes its grants."""
    return TokenBroker(
        store,
        new,
        clock,
        seams=Seams(rng=random.Random(1)),
        identities=Identities(NEW, [IdentityRefresher(OURS, old)]),
    )


async def test_each_grant_refreshes_with_the_identity_that_created_it() -> None:
    clock = FakeClock()
    store = MemoryGrantStore(clock, identity=OURS)
    await store.add_identity(NEW, state=IdentityState.ACTIVE, key_uri=NEW_URI)
    store = MemoryGrantStore(clock, identity=NEW, shared_with=store)
    await store.create(expired_grant(clock, "old-grant"))
    await store.create(
        expired_grant(clock, "new-grant", client_id=NEW.client_id, refresh_token="RT-new")
    )
    old, new = FakeRefresher(clock), FakeRefresher(clock)
    broker = _broker(clock, store, old, new)

    assert (await broker.get_access_token("old-grant")).access_token == "at-1"
    assert (await broker.get_access_token("new-grant")).access_token == "at-1"

    assert old.used == ["RT-old-grant-v1-plaintext"]  # the old key's client, its own token
    assert new.used == ["RT-new"]
    stored = await store.get("old-grant")
    assert stored.client_id == OURS.client_id and stored.status is GrantStatus.ACTIVE


async def test_a_grant_of_no_recorded_identity_is_still_never_sent() -> None:
    clock = FakeClock()
    store = MemoryGrantStore(clock)
    stranger = "did:key:zDnaeStranger"
    await store.create(expired_grant(clock, "foreign", client_id=stranger))
    old, new = FakeRefresher(clock), FakeRefresher(clock)
    broker = _broker(clock, store, old, new)

    with pytest.raises(DeploymentMismatch) as info:
        await broker.get_access_token("foreign")

    assert old.used == [] and new.used == []
    message = str(info.value)
    assert stranger in message and OURS.client_id in message and NEW.client_id in message
    assert (await store.get("foreign")).last_error == "deployment_mismatch"


async def test_a_machine_grant_of_the_old_identity_is_not_renewed_as_the_new_one() -> None:
    clock = FakeClock()
    store = MemoryGrantStore(clock)
    await store.create(expired_grant(clock, "m2m-old", kind=GrantKind.MACHINE, refresh_token=None))
    old, new = FakeRefresher(clock), FakeRefresher(clock)
    broker = _broker(clock, store, old, new)

    with pytest.raises(DeploymentMismatch) as info:
        await broker.get_access_token("m2m-old")

    assert "machine grants renew only as the active" in str(info.value)
    assert old.used == [] and new.used == []
