# ruff: noqa: PLR0917  (pytest injects fixtures as positional parameters)
"""Machine-to-machine (DOME client_credentials with a LEARCredentialMachine) against the real
oidc-provider peer, which checks the DOME shape (tests/peer/peer.mjs: VP signature by the
client's key, the credential's RS256/x5c signature, binding, window, trusted issuer; empty 403
otherwise). The client key is in SoftHSM; the credential comes from tests/credentials/issuer.py.

The token core runs on a shifted clock (tests/integration/flow.py ``ShiftedClock``) so that a
token can be made nearly expired without waiting; assertions are signed on the system clock
(the peer checks their ``exp`` with no allowance, like DOME).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest

from broker.clock import SystemClock
from broker.credentials.lear import parse_credential
from broker.errors import ClientAuthenticationFailed, CredentialError, MachineGrantRejected
from broker.keys.api import Signer
from broker.keys.soft import SoftKeyStore
from broker.oauth.client import OAuthClient
from broker.oauth.client_credentials import MachineClient
from broker.oauth.config import ClientConfig
from broker.server.errors import to_rich_status
from broker.tokens.broker import TokenBroker
from broker.tokens.machine import MachineGrantSpec
from broker.tokens.model import GrantKind
from broker.tokens.stores.memory import MemoryGrantStore
from devtools.peer import Peer
from tests.credentials.issuer import TestIssuer
from tests.integration.conftest import CALLBACK_PATH
from tests.integration.flow import ShiftedClock

SCOPE = "machine learcredential"
OTHER_DID = "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY"


class NoRefresh:
    async def refresh(self, refresh_token: str, *, subject: str) -> object:
        raise AssertionError("a machine grant never refreshes")


@pytest.fixture(scope="module")
def dome_issuer() -> TestIssuer:
    return TestIssuer.self_signed()


@pytest.fixture
async def http(peer: Peer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=peer.pki.ssl_context()) as client:
        yield client


@pytest.fixture
def fresh_peer(peer: Peer) -> Iterator[Peer]:
    peer.reset_log()
    peer.set_access_token_ttl(3600)
    yield peer
    set_trusted(peer, None)
    peer.set_access_token_ttl(120)


def set_trusted(peer: Peer, issuers: list[str] | None) -> None:
    with httpx.Client(verify=peer.pki.ssl_context()) as admin:
        admin.post(f"{peer.admin_base}/admin/m2m", json={"trusted_issuers": issuers})


def machine_core(
    peer: Peer, http: httpx.AsyncClient, signer: Signer, credential: str, core_clock: ShiftedClock
) -> tuple[TokenBroker, MachineGrantSpec]:
    config = ClientConfig(
        issuer=peer.issuer, client_id=signer.kid, redirect_uri="https://b.example" + CALLBACK_PATH
    )
    system = SystemClock()
    oauth = OAuthClient(config, http, signer, system)
    source = MachineClient(oauth, signer, system, lambda: parse_credential(credential))
    core = TokenBroker(MemoryGrantStore(core_clock), NoRefresh(), core_clock, machine=source)  # type: ignore[arg-type]
    spec = MachineGrantSpec(
        label=f"billing-{secrets.token_hex(3)}",
        scope=SCOPE,
        issuer=peer.issuer,
        client_id=signer.kid,
    )
    return core, spec


def m2m_requests(peer: Peer) -> list[dict[str, object]]:
    return [r for r in peer.token_requests() if r.get("grant_type") == "client_credentials"]


async def test_machine_grant_in_the_dome_shape_then_one_reacquisition_for_50_callers(
    fresh_peer: Peer, http: httpx.AsyncClient, client_signer: Signer, dome_issuer: TestIssuer
) -> None:
    peer, did = fresh_peer, client_signer.kid
    credential = dome_issuer.issue(did, now=datetime.now(UTC))
    clock = ShiftedClock()
    core, spec = machine_core(peer, http, client_signer, credential, clock)
    peer.set_access_token_ttl(100)
    grant = await core.ensure_machine_grant(spec)
    assert (grant.kind, grant.subject, grant.refresh_token) == (GrantKind.MACHINE, did, None)

    (first,) = m2m_requests(peer)
    assert first["status"] == 200
    form = first["form"]
    assert isinstance(form, dict)
    assert set(form) == {
        "grant_type",
        "scope",
        "client_id",
        "client_assertion_type",
        "client_assertion",
    }
    assert form["client_id"] == did and form["scope"] == SCOPE
    assertion = first["assertion"]
    assert isinstance(assertion, dict)
    assert assertion["header"] == {"alg": "ES256", "typ": "JWT", "kid": did}
    claims = assertion["claims"]
    assert claims["iss"] == claims["sub"] == did and claims["aud"] == peer.issuer
    vp_jws = base64.b64decode(claims["vp_token"]).decode("ascii")
    presentation = first["presentation"]
    assert isinstance(presentation, dict)
    vp, vc = presentation["vp"], presentation["vc"]
    assert vp["jws"] == vp_jws
    assert vp["header"] == {"alg": "ES256", "typ": "JWT", "kid": did}
    assert vp["claims"]["iss"] == vp["claims"]["sub"] == did
    assert vp["claims"]["aud"] == peer.issuer
    assert vp["claims"]["vp"]["holder"] == did
    assert vp["claims"]["vp"]["type"] == ["VerifiablePresentation"]
    assert vp["claims"]["vp"]["verifiableCredential"] == [credential]
    assert vc["header"]["alg"] == "RS256" and vc["claims"]["sub"] == did
    assert "LEARCredentialMachine" in vc["claims"]["vc"]["type"]
    issued = first["issued"]
    assert isinstance(issued, dict)
    assert issued["refresh_token"] is None and issued["id_token"] is None

    # 90 of the 100 s gone for the token core: 10 s left, below min_serve_ttl -> every caller
    # needs a new token; exactly one client_credentials request serves all 50.
    peer.set_access_token_ttl(3600)
    clock.offset = 90.0
    tokens = await asyncio.gather(*(core.get_access_token(grant.grant_id) for _ in range(50)))
    requests = m2m_requests(peer)
    assert len(requests) == 2 and requests[1]["status"] == 200
    renewed = requests[1]["issued"]
    assert isinstance(renewed, dict)
    assert {t.access_token for t in tokens} == {renewed["access_token"]}
    assert requests[1]["assertion"]["claims"]["jti"] != claims["jti"]  # type: ignore[index]
    # And the next 50 are served from the cache.
    await asyncio.gather(*(core.get_access_token(grant.grant_id) for _ in range(50)))
    assert len(m2m_requests(peer)) == 2


@pytest.mark.parametrize(("case", "reason"), [("expired", "expired"), ("other_did", "not_bound")])
async def test_credential_refused_locally_sends_nothing(
    fresh_peer: Peer,
    http: httpx.AsyncClient,
    client_signer: Signer,
    dome_issuer: TestIssuer,
    case: str,
    reason: str,
) -> None:
    now = datetime.now(UTC)
    if case == "expired":
        credential = dome_issuer.issue(
            client_signer.kid,
            now=now,
            valid_from=now - timedelta(days=30),
            valid_for=timedelta(seconds=-60),
        )
    else:
        credential = dome_issuer.issue(OTHER_DID, now=now)
    core, spec = machine_core(fresh_peer, http, client_signer, credential, ShiftedClock())
    with pytest.raises(CredentialError) as caught:
        await core.ensure_machine_grant(spec)
    assert caught.value.reason == reason and not caught.value.retryable
    code, _message, _trailers = to_rich_status(caught.value)
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert m2m_requests(fresh_peer) == []


async def test_empty_403_from_the_peer_is_m2m_rejected_failed_precondition(
    fresh_peer: Peer, http: httpx.AsyncClient, client_signer: Signer, dome_issuer: TestIssuer
) -> None:
    set_trusted(fresh_peer, ["did:elsi:VATES-NOT-OURS"])
    credential = dome_issuer.issue(client_signer.kid, now=datetime.now(UTC))
    core, spec = machine_core(fresh_peer, http, client_signer, credential, ShiftedClock())
    with pytest.raises(MachineGrantRejected) as caught:
        await core.ensure_machine_grant(spec)
    assert (caught.value.reason, caught.value.retryable) == ("m2m_rejected", False)
    code, message, _trailers = to_rich_status(caught.value)
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "m2m_rejected" in message
    (request,) = m2m_requests(fresh_peer)
    assert (request["status"], request["m2m_reason"]) == (403, "untrusted_issuer")
    # Non-retryable: the first caller of the grant fails fast (back-off), nothing more is sent.
    with pytest.raises(MachineGrantRejected):
        await core.get_access_token(spec.grant_id)
    assert len(m2m_requests(fresh_peer)) == 1


async def test_401_invalid_client_for_an_unregistered_did(
    fresh_peer: Peer, http: httpx.AsyncClient, dome_issuer: TestIssuer
) -> None:
    soft = SoftKeyStore()
    soft.generate("stranger", b"\x07")
    stranger = soft.signer("stranger")
    credential = dome_issuer.issue(stranger.kid, now=datetime.now(UTC))
    core, spec = machine_core(fresh_peer, http, stranger, credential, ShiftedClock())
    with pytest.raises(ClientAuthenticationFailed) as caught:
        await core.ensure_machine_grant(spec)
    assert type(caught.value) is ClientAuthenticationFailed
    assert caught.value.error == "invalid_client"
    (request,) = m2m_requests(fresh_peer)
    assert request["status"] == 401
