# ruff: noqa: PLR0917  (pytest injects fixtures as positional parameters)
"""DOME machine-to-machine: the client credentials request with a LEARCredentialMachine VP in
the client assertion (MockTransport AS for the faults; the real peer is in
tests/integration/test_m2m.py). C08: every assertion (and its VP) fresh per attempt."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from broker.credentials.lear import LearCredentialMachine, parse_credential
from broker.errors import (
    ClientAuthenticationFailed,
    CredentialError,
    MachineGrantRejected,
    OAuthErrorResponse,
)
from broker.keys.didkey import public_key_from_did
from broker.keys.soft import SoftSigner
from broker.oauth.client import OAuthClient
from broker.oauth.client_credentials import MachineClient, check_audience
from broker.oauth.config import ClientConfig
from broker.oauth.vp import VC_CONTEXT_V2, vp_token_value
from tests.clock import FakeClock
from tests.credentials.issuer import TestIssuer
from tests.oauth.fakeas import ISSUER, FakeAS

SCOPE = "machine learcredential"


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def _b64url_json(segment: str) -> dict[str, object]:
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


def verify_es256(jwt: str, did: str) -> tuple[dict[str, object], dict[str, object]]:
    """Verify a compact ES256 JWS with the did:key public key (cryptography, not our jose)."""
    head, body, sig = jwt.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public_key_from_did(did).verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    return _b64url_json(head), _b64url_json(body)


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer.self_signed()


@pytest.fixture
async def http_client(fake_as: FakeAS) -> AsyncIterator[httpx.AsyncClient]:
    async with fake_as.client() as client:
        yield client


def machine(
    config: ClientConfig,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    clock: FakeClock,
    credential: str,
) -> MachineClient:
    oauth = OAuthClient(config, http, signer, clock, sleep=Sleeps(), jitter=lambda: 0.0)
    return MachineClient(oauth, signer, clock, lambda: parse_credential(credential))


def ok(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, json={"access_token": "m2m-at", "token_type": "Bearer", "expires_in": 3600}
    )


def now_of(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(clock.now(), UTC)


async def test_c08_request_has_the_dome_m2m_shape(
    fake_as: FakeAS,
    http_client: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    clock: FakeClock,
    issuer: TestIssuer,
) -> None:
    did = config.client_id
    credential = issuer.issue(did, now=now_of(clock))
    fake_as.token = ok
    tokens = await machine(config, http_client, signer, clock, credential).acquire(
        label="billing", scope=SCOPE
    )
    assert (tokens.access_token, tokens.refresh_token, tokens.id_token) == ("m2m-at", None, None)
    assert tokens.expires_at == clock.now() + 3600
    (form,) = fake_as.token_forms()
    assert set(form) == {
        "grant_type",
        "scope",
        "client_id",
        "client_assertion_type",
        "client_assertion",
    }
    assert (form["grant_type"], form["client_id"], form["scope"]) == (
        "client_credentials",
        did,
        SCOPE,
    )
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    header, claims = verify_es256(form["client_assertion"], did)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": did}
    assert claims["iss"] == claims["sub"] == did
    assert claims["aud"] == ISSUER  # one string, the issuer
    assert isinstance(claims["jti"], str) and isinstance(claims["exp"], int)
    vp_token = claims["vp_token"]
    assert isinstance(vp_token, str)
    assert base64.b64encode(base64.b64decode(vp_token, validate=True)).decode() == vp_token
    vp_jwt = base64.b64decode(vp_token).decode("ascii")
    assert vp_token == vp_token_value(vp_jwt)
    vp_header, vp_claims = verify_es256(vp_jwt, did)
    assert vp_header == {"alg": "ES256", "typ": "JWT", "kid": did}
    assert vp_claims["iss"] == vp_claims["sub"] == did
    assert vp_claims["aud"] == ISSUER
    assert vp_claims["nbf"] == vp_claims["iat"] == int(clock.now())
    assert vp_claims["exp"] == int(clock.now()) + 60
    assert vp_claims["vp"] == {
        "@context": [VC_CONTEXT_V2],
        "type": ["VerifiablePresentation"],
        "holder": did,
        "verifiableCredential": [credential],
    }
    assert vp_claims["jti"] != claims["jti"]


async def test_c08_every_retry_has_a_fresh_assertion_and_presentation(
    fake_as: FakeAS,
    http_client: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    clock: FakeClock,
    issuer: TestIssuer,
) -> None:
    answers = iter([httpx.Response(503), httpx.Response(503)])
    fake_as.token = lambda r: next(answers, None) or ok(r)
    credential = issuer.issue(config.client_id, now=now_of(clock))
    await machine(config, http_client, signer, clock, credential).acquire(label="b", scope=SCOPE)
    forms = fake_as.token_forms()
    assert len(forms) == 3
    claims = [verify_es256(f["client_assertion"], config.client_id)[1] for f in forms]
    assert len({c["jti"] for c in claims}) == 3
    vps = [base64.b64decode(str(c["vp_token"])).decode() for c in claims]
    assert len({verify_es256(v, config.client_id)[1]["jti"] for v in vps}) == 3


async def test_empty_403_is_m2m_rejected_not_retryable_with_an_operator_log(
    fake_as: FakeAS,
    http_client: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    clock: FakeClock,
    issuer: TestIssuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fails before the change: an empty 403 on the token endpoint was InvalidGrant."""
    fake_as.token = lambda _r: httpx.Response(403)
    credential = issuer.issue(config.client_id, now=now_of(clock))
    client = machine(config, http_client, signer, clock, credential)
    with caplog.at_level(logging.ERROR), pytest.raises(MachineGrantRejected) as caught:
        await client.acquire(label="billing", scope=SCOPE)
    assert (caught.value.reason, caught.value.retryable) == ("m2m_rejected", False)
    assert isinstance(caught.value, ClientAuthenticationFailed)
    assert fake_as.count("/oidc/token") == 1  # no retry
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert "trusted issuers" in logged and "revoked" in logged
    assert credential not in caplog.text and "eyJ" not in caplog.text


async def test_401_invalid_client_stays_client_authentication_failed(
    fake_as: FakeAS,
    http_client: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    clock: FakeClock,
    issuer: TestIssuer,
) -> None:
    fake_as.token = lambda _r: httpx.Response(401, json={"error": "invalid_client"})
    credential = issuer.issue(config.client_id, now=now_of(clock))
    with pytest.raises(ClientAuthenticationFailed) as caught:
        await machine(config, http_client, signer, clock, credential).acquire(
            label="b", scope=SCOPE
        )
    assert type(caught.value) is ClientAuthenticationFailed
    assert caught.value.reason == "client_authentication_failed"


async def test_400_invalid_request_is_an_oauth_error(
    fake_as: FakeAS,
    http_client: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    clock: FakeClock,
    issuer: TestIssuer,
) -> None:
    fake_as.token = lambda _r: httpx.Response(
        400, json={"error": "invalid_request", "error_description": "@context"}
    )
    credential = issuer.issue(config.client_id, now=now_of(clock))
    with pytest.raises(OAuthErrorResponse) as caught:
        await machine(config, http_client, signer, clock, credential).acquire(
            label="b", scope=SCOPE
        )
    assert caught.value.error == "invalid_request" and not caught.value.retryable


@pytest.mark.parametrize(
    ("case", "reason"),
    [("expired", "expired"), ("other_did", "not_bound"), ("not_machine", "not_lear_machine")],
)
async def test_local_checks_refuse_with_a_reason_and_send_nothing(
    fake_as: FakeAS,
    http_client: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    clock: FakeClock,
    issuer: TestIssuer,
    caplog: pytest.LogCaptureFixture,
    case: str,
    reason: str,
) -> None:
    fake_as.token = ok
    now = now_of(clock)
    did = config.client_id
    if case == "expired":
        credential = issuer.issue(
            did, now=now, valid_from=now - timedelta(days=30), valid_for=timedelta(seconds=-10)
        )
    elif case == "other_did":
        credential = issuer.issue(
            "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY", now=now
        )
    else:
        credential = issuer.issue(
            did, now=now, types=["VerifiableCredential", "LEARCredentialEmployee"]
        )

    def load() -> LearCredentialMachine:
        return parse_credential(credential)

    oauth = OAuthClient(config, http_client, signer, clock, sleep=Sleeps())
    client = MachineClient(oauth, signer, clock, load)
    with caplog.at_level(logging.ERROR), pytest.raises(CredentialError) as caught:
        await client.acquire(label="billing", scope=SCOPE)
    assert caught.value.reason == reason and not caught.value.retryable
    assert fake_as.count("/oidc/token") == 0
    assert "no token request sent" in caplog.text and reason in caplog.text


def test_audience_must_be_the_issuer_as_one_string() -> None:
    assert check_audience(ISSUER, issuer=ISSUER) == ISSUER
    for wrong in ([ISSUER], f"{ISSUER}/oidc/token", None):
        with pytest.raises(Exception, match="one string"):
            check_audience(wrong, issuer=ISSUER)
