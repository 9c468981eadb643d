"""The test peer with several clients (a key rotation: the old did and the new one): listed in
its configuration (``PeerSettings.more_clients``) or registered while it runs
(``Peer.register_client``, standing for "TSL entry + Verifier restart" without the restart's
loss of state). Each client is authenticated with its own key: a bogus refresh token is
``invalid_grant`` for a known client and ``invalid_client`` for an unknown one (what
``broker keys rotate status`` tells apart), and the DOME client_credentials front check
verifies a presentation by the client it names."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from broker.clock import SystemClock
from broker.credentials.lear import parse_credential
from broker.errors import ClientAuthenticationFailed, InvalidGrant
from broker.keys.api import Signer
from broker.keys.didkey import jwk_from_did
from broker.keys.soft import SoftKeyStore
from broker.oauth.client import OAuthClient
from broker.oauth.client_credentials import MachineClient
from broker.oauth.config import ClientConfig
from devtools.peer import Peer, PeerClient, PeerSettings, Pki, stop_peer
from tests.credentials.issuer import TestIssuer
from tests.integration.conftest import CALLBACK_PATH, start_peer

pytestmark = pytest.mark.peer

REDIRECT = "https://broker.example" + CALLBACK_PATH


def new_signer(keys: SoftKeyStore, name: str) -> Signer:
    keys.generate(name, secrets.token_bytes(4))
    return keys.signer(name)


@pytest.fixture(scope="module")
def signers() -> tuple[Signer, Signer, Signer]:
    keys = SoftKeyStore()
    return new_signer(keys, "a"), new_signer(keys, "b"), new_signer(keys, "c")


@pytest.fixture(scope="module")
def two_client_peer(
    pki: Pki, signers: tuple[Signer, Signer, Signer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Peer]:
    a, b, _ = signers
    settings = PeerSettings(
        client_id=a.kid,
        client_jwk=jwk_from_did(a.kid),
        redirect_uris=[REDIRECT],
        more_clients=[PeerClient(b.kid, jwk_from_did(b.kid), [REDIRECT])],
    )
    peer = start_peer(pki, settings, tmp_path_factory.mktemp("peer-clients"))
    try:
        yield peer
    finally:
        stop_peer(peer)


@pytest.fixture
async def http(two_client_peer: Peer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=two_client_peer.pki.ssl_context()) as client:
        yield client


def oauth(peer: Peer, http: httpx.AsyncClient, signer: Signer) -> OAuthClient:
    config = ClientConfig(issuer=peer.issuer, client_id=signer.kid, redirect_uri=REDIRECT)
    return OAuthClient(config, http, signer, SystemClock())


async def bogus_refresh(peer: Peer, http: httpx.AsyncClient, signer: Signer) -> type[Exception]:
    try:
        await oauth(peer, http, signer).refresh("bogus-" + secrets.token_hex(8), subject=signer.kid)
    except (InvalidGrant, ClientAuthenticationFailed) as exc:
        return type(exc)
    raise AssertionError("the peer accepted a bogus refresh token")


async def test_every_listed_client_is_known_with_its_own_key(
    two_client_peer: Peer, http: httpx.AsyncClient, signers: tuple[Signer, Signer, Signer]
) -> None:
    a, b, c = signers
    assert await bogus_refresh(two_client_peer, http, a) is InvalidGrant
    assert await bogus_refresh(two_client_peer, http, b) is InvalidGrant
    assert await bogus_refresh(two_client_peer, http, c) is ClientAuthenticationFailed


async def test_a_client_registered_at_runtime_is_known_from_then_on(
    two_client_peer: Peer, http: httpx.AsyncClient, signers: tuple[Signer, Signer, Signer]
) -> None:
    _, b, c = signers
    assert await bogus_refresh(two_client_peer, http, c) is ClientAuthenticationFailed
    two_client_peer.register_client(PeerClient(c.kid, jwk_from_did(c.kid), [REDIRECT]))
    assert await bogus_refresh(two_client_peer, http, c) is InvalidGrant
    with pytest.raises(httpx.HTTPStatusError) as again:
        two_client_peer.register_client(PeerClient(b.kid, jwk_from_did(b.kid), [REDIRECT]))
    assert again.value.response.status_code == 409


async def test_client_credentials_front_check_uses_the_named_clients_key(
    two_client_peer: Peer, http: httpx.AsyncClient, signers: tuple[Signer, Signer, Signer]
) -> None:
    _, b, _ = signers
    credential = TestIssuer.self_signed().issue(b.kid, now=datetime.now(UTC))
    client = oauth(two_client_peer, http, b)
    machine = MachineClient(client, b, SystemClock(), lambda: parse_credential(credential))
    tokens = await machine.acquire(label="rotation", scope="machine learcredential")
    assert tokens.access_token
    (seen,) = [
        r
        for r in two_client_peer.token_requests()
        if r.get("grant_type") == "client_credentials" and r["form"]["client_id"] == b.kid
    ]
    assert seen["status"] == 200 and "m2m_reason" not in seen


def test_single_client_configuration_still_works(
    pki: Pki, signers: tuple[Signer, Signer, Signer], tmp_path: Path
) -> None:
    a, _, _ = signers
    settings = PeerSettings(
        client_id=a.kid, client_jwk=jwk_from_did(a.kid), redirect_uris=[REDIRECT]
    )
    peer = start_peer(pki, settings, tmp_path)
    try:
        with httpx.Client(verify=pki.ssl_context()) as admin:
            config = admin.get(f"{peer.issuer}/.well-known/openid-configuration").json()
        assert config["issuer"] == peer.issuer
    finally:
        stop_peer(peer)
