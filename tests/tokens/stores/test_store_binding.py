"""Deployment binding contract: memory, SQLite and PostgreSQL stores record the identity that
created them and refuse another one (issue 8 section 3).

Each case opens a store, then "restarts" it: the same data opened again with an identity (the
memory store via ``shared_with``, SQLite by path, PostgreSQL by schema).
"""

from __future__ import annotations

import logging

import pytest

from broker.errors import DeploymentMismatch
from broker.tokens.stores.deployment import DeploymentIdentity, IdentityRole, RecordedHow
from broker.tokens.stores.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from broker.tokens.stores.sqlite import SCHEMA_VERSION
from tests.tokens.stores import helpers
from tests.tokens.stores.helpers import (
    OURS,
    Opener,
    make_grant,
)

OTHER_AS = DeploymentIdentity(
    issuer="https://other-verifier.example", client_id=OURS.client_id, did=OURS.did
)
OTHER_KEY = DeploymentIdentity(
    issuer=OURS.issuer, client_id="did:key:zDnaeOtherKey", did="did:key:zDnaeOtherKey"
)

opener = helpers.opener  # the memory / SQLite / PostgreSQL fixture


async def test_identity_is_recorded_at_creation_as_primary(opener: Opener) -> None:
    store = await opener(identity=OURS)
    (recorded,) = await store.identities()
    assert recorded.identity == OURS
    assert recorded.role is IdentityRole.PRIMARY
    assert recorded.how is RecordedHow.CREATED
    assert recorded.schema_version == SCHEMA_VERSION == PG_SCHEMA_VERSION


async def test_restart_with_the_same_identity_adds_nothing(opener: Opener) -> None:
    first = await opener(identity=OURS)
    await first.create(make_grant())
    again = await opener(identity=OURS)
    assert [r.identity for r in await again.identities()] == [OURS]
    assert (await again.get("g-1")).refresh_token == "RT-g-1-v1-plaintext"


@pytest.mark.parametrize("configured", [OTHER_AS, OTHER_KEY], ids=["other-issuer", "other-key"])
async def test_store_of_another_deployment_is_refused_naming_both_sides(
    opener: Opener, configured: DeploymentIdentity
) -> None:
    first = await opener(identity=OURS)
    await first.create(make_grant())
    with pytest.raises(DeploymentMismatch) as info:
        await opener(identity=configured)
    assert info.value.retryable is False
    message = str(info.value)
    for side in (OURS, configured):
        assert repr(side.issuer) in message and repr(side.client_id) in message
    assert "RT-g-1" not in message and "AT-g-1" not in message
    # A plain restart with another configuration never adds an identity.
    check = await opener()
    assert [r.identity for r in await check.identities()] == [OURS]


async def test_bound_store_refuses_a_grant_of_another_issuer(opener: Opener) -> None:
    store = await opener(identity=OURS)
    with pytest.raises(DeploymentMismatch):
        await store.create(make_grant("g-x", issuer=OTHER_AS.issuer))
    assert await store.list() == []


async def test_store_without_identity_is_adopted_when_every_grant_is_ours(
    opener: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    unbound = await opener()
    await unbound.create(make_grant())
    assert list(await unbound.identities()) == []
    with caplog.at_level(logging.WARNING, logger="broker.tokens.stores.deployment"):
        bound = await opener(identity=OURS)
    (recorded,) = await bound.identities()
    assert (recorded.identity, recorded.how) == (OURS, RecordedHow.ADOPTED)
    assert any("had no deployment identity" in r.getMessage() for r in caplog.records)


async def test_store_without_identity_holding_foreign_grants_is_refused(opener: Opener) -> None:
    unbound = await opener()
    await unbound.create(make_grant("g-1"))
    await unbound.create(make_grant("g-2", issuer=OTHER_AS.issuer))
    with pytest.raises(DeploymentMismatch) as info:
        await opener(identity=OURS)
    assert OTHER_AS.issuer in str(info.value) and OURS.issuer in str(info.value)
    check = await opener()
    assert list(await check.identities()) == []  # nothing recorded by the refused open


async def test_compare_only_open_records_nothing(opener: Opener) -> None:
    await opener()
    await opener(identity=OURS, record_identity=False)
    check = await opener()
    assert list(await check.identities()) == []
    await opener(identity=OURS)  # serve's open records it
    with pytest.raises(DeploymentMismatch):
        await opener(identity=OTHER_AS)
