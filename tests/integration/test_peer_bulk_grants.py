"""The test peer's bulk grants (``PeerSettings.bulk_grants``, ``Peer.mint_grants``; what
bench/storm.py starts from): minted refresh tokens are real, the token endpoint's refresh_token
grant accepts and rotates each one, and the peer counts the requests by grant. A peer started
without the option has no such route."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from broker.clock import SystemClock
from broker.errors import InvalidGrant
from broker.keys.api import Signer
from broker.keys.didkey import jwk_from_did
from broker.keys.soft import SoftKeyStore
from broker.oauth.client import OAuthClient
from broker.oauth.config import ClientConfig
from devtools.peer import Peer, PeerSettings, Pki, stop_peer
from tests.integration.conftest import CALLBACK_PATH, start_peer

pytestmark = pytest.mark.peer

REDIRECT = "https://broker.example" + CALLBACK_PATH


@pytest.fixture(scope="module")
def signer() -> Signer:
    keys = SoftKeyStore()
    keys.generate("bulk", secrets.token_bytes(4))
    return keys.signer("bulk")


def settings_for(signer: Signer, *, bulk_grants: bool) -> PeerSettings:
    return PeerSettings(
        client_id=signer.kid,
        client_jwk=jwk_from_did(signer.kid),
        redirect_uris=[REDIRECT],
        bulk_grants=bulk_grants,
    )


@pytest.fixture(scope="module")
def bulk_peer(pki: Pki, signer: Signer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    peer = start_peer(
        pki, settings_for(signer, bulk_grants=True), tmp_path_factory.mktemp("peer-bulk")
    )
    try:
        yield peer
    finally:
        stop_peer(peer)


@pytest.fixture
async def client(bulk_peer: Peer, signer: Signer) -> AsyncIterator[OAuthClient]:
    config = ClientConfig(issuer=bulk_peer.issuer, client_id=signer.kid, redirect_uri=REDIRECT)
    async with httpx.AsyncClient(verify=bulk_peer.pki.ssl_context()) as http:
        yield OAuthClient(config, http, signer, SystemClock())


async def test_minted_refresh_tokens_refresh_and_rotate_at_the_token_endpoint(
    bulk_peer: Peer, client: OAuthClient
) -> None:
    minted = bulk_peer.mint_grants(3)
    assert len({g.grant_id for g in minted}) == 3
    assert len({g.refresh_token for g in minted}) == 3
    first = minted[0]
    tokens = await client.refresh(first.refresh_token, subject=first.subject)
    assert tokens.access_token
    assert tokens.refresh_token not in (None, first.refresh_token)  # rotated
    assert tokens.subject == first.subject
    counts = bulk_peer.token_counts()
    assert counts["by_grant"] == {first.grant_id: 1}
    assert counts["by_status"] == {"200": 1}
    # the rotated-out token is spent; the new one refreshes the same grant
    with pytest.raises(InvalidGrant):
        await client.refresh(first.refresh_token, subject=first.subject)
    second = minted[1]
    await client.refresh(second.refresh_token, subject=second.subject)
    assert bulk_peer.token_counts()["by_grant"][second.grant_id] == 1


def test_a_peer_without_the_option_has_no_bulk_route(
    pki: Pki, signer: Signer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    peer = start_peer(
        pki, settings_for(signer, bulk_grants=False), tmp_path_factory.mktemp("peer-no-bulk")
    )
    try:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            peer.mint_grants(1)
        assert refused.value.response.status_code == 404
    finally:
        stop_peer(peer)
