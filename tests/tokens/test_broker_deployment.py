"""The refresh path sends a grant's refresh token only to its own issuer, as its own client.

Issue 8 section 3: a store of another deployment (same sealing key) listed a foreign grant and
its refresh token went to the configured AS. Besides the store-level binding, the token core
compares every grant's issuer/client_id with the OAuth client's before anything is sent.
"""

from __future__ import annotations

import random
import time

import pytest

from broker.app.stores import deployment_identity
from broker.errors import DeploymentMismatch
from broker.keys.soft import SoftKeyStore
from broker.oauth.client import OAuthClient
from broker.oauth.config import ClientConfig
from broker.tokens.broker import TokenBroker
from broker.tokens.model import Grant, GrantStatus
from broker.tokens.settings import Identities, Seams
from broker.tokens.stores.deployment import DeploymentIdentity
from broker.tokens.stores.memory import MemoryGrantStore
from tests.clock import FakeClock
from tests.oauth.fakeas import ISSUER, REDIRECT_URI, FakeAS
from tests.tokens.fakes import FakeRefresher
from tests.tokens.stores.helpers import make_grant

OURS = DeploymentIdentity(
    issuer="https://verifier.example", client_id="did:key:zDnaeClient", did="did:key:zDnaeClient"
)


def expired_grant(clock: FakeClock, grant_id: str, **overrides: object) -> Grant:
    now = clock.now()
    return make_grant(
        grant_id,
        access_expires_at=now - 1,
        created_at=now - 3600,
        updated_at=now - 3600,
        **overrides,
    )


@pytest.mark.parametrize(
    ("issuer", "client_id"),
    [
        ("https://other-verifier.example", OURS.client_id),  # another AS
        (OURS.issuer, "did:key:zDnaeSomeoneElse"),  # another client at our AS
    ],
)
async def test_grant_of_another_deployment_is_never_sent(issuer: str, client_id: str) -> None:
    clock = FakeClock()
    store = MemoryGrantStore(clock)  # unbound: holds whatever it was given
    await store.create(expired_grant(clock, "foreign", issuer=issuer, client_id=client_id))
    refresher = FakeRefresher(clock)
    broker = TokenBroker(
        store, refresher, clock, seams=Seams(rng=random.Random(1)), identities=Identities(OURS)
    )

    with pytest.raises(DeploymentMismatch) as info:
        await broker.get_access_token("foreign")

    assert refresher.calls == 0 and refresher.used == []  # nothing reached the AS
    assert info.value.retryable is False
    message = str(info.value)
    assert issuer in message and client_id in message  # the grant's side
    assert OURS.issuer in message and OURS.client_id in message  # ours
    assert "RT-foreign" not in message
    stored = await store.get("foreign")
    assert stored.refresh_started_at is None  # no intent recorded: nothing was sent
    assert stored.status is GrantStatus.ACTIVE  # not ours to bury
    assert stored.last_error == "deployment_mismatch"
    assert stored.refresh_token == "RT-foreign-v1-plaintext"


async def test_grant_of_this_deployment_is_refreshed() -> None:
    clock = FakeClock()
    store = MemoryGrantStore(clock, identity=OURS)
    await store.create(expired_grant(clock, "ours"))
    refresher = FakeRefresher(clock)
    broker = TokenBroker(
        store, refresher, clock, seams=Seams(rng=random.Random(1)), identities=Identities(OURS)
    )
    token = await broker.get_access_token("ours")
    assert token.access_token == "at-1"
    assert refresher.used == ["RT-ours-v1-plaintext"]


async def test_foreign_grant_through_the_real_oauth_client_makes_no_request() -> None:
    """With the OAuth client serve builds: the fake AS sees no request at all."""
    clock = FakeClock(now=float(int(time.time())))
    keys = SoftKeyStore()
    keys.generate("client", b"\x01")
    signer = keys.signer("client")
    config = ClientConfig(issuer=ISSUER, client_id=signer.kid, redirect_uri=REDIRECT_URI)
    fake_as = FakeAS()
    store = MemoryGrantStore(clock)
    await store.create(
        expired_grant(
            clock, "foreign", issuer="https://other-verifier.example", client_id=signer.kid
        )
    )
    async with fake_as.client() as http:
        client = OAuthClient(config, http, signer, clock)
        broker = TokenBroker(
            store,
            client,
            clock,
            seams=Seams(rng=random.Random(1)),
            identities=Identities(deployment_identity(client.config, signer.kid)),
        )
        with pytest.raises(DeploymentMismatch):
            await broker.get_access_token("foreign")
        await broker.stop()
    assert fake_as.requests == []
