# ruff: noqa: PLR0917  (pytest injects fixtures as positional parameters)
"""OAuthClient: composition, A08, PAR (RFC 9126), the DOME exchange gate, spans and trace
context propagation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.errors import (
    AuthServerUnavailable,
    DiscoveryError,
    InvalidArgument,
    InvalidGrant,
    OAuthErrorResponse,
    TokenValidationError,
    UnexpectedResponse,
)
from broker.jose import unverified_parts
from broker.keys.soft import SoftSigner
from broker.oauth.client import ClientReporting, ClientTimings, OAuthClient
from broker.oauth.client_auth import JWT_BEARER
from broker.oauth.config import ClientConfig
from broker.tokens.ports import Refresher
from tests.clock import FakeClock
from tests.oauth.fakeas import ISSUER, REDIRECT_URI, FakeAS, form_of

NONCE = "nonce-nonce-nonce-nonce-nonce-1"
SUBJECT = "did:key:zDnaeUser"


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)


def _tokens(
    fake_as: FakeAS,
    client_id: str,
    clock: FakeClock,
    *,
    with_rt: bool = True,
    drop_id_token: bool = False,
    **id_claims: Any,
) -> httpx.Response:
    body: dict[str, Any] = {
        "access_token": "at-new",
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": fake_as.id_token(client_id, now=clock.now(), **id_claims),
    }
    if with_rt:
        body["refresh_token"] = "rt-new"
    if drop_id_token:
        del body["id_token"]
    return httpx.Response(200, json=body)


@pytest.fixture
def client(
    http: httpx.AsyncClient, signer: SoftSigner, config: ClientConfig, clock: FakeClock
) -> OAuthClient:
    return OAuthClient(config, http, signer, clock, sleep=Sleeps(), jitter=lambda: 0.0)


def test_oauth_client_is_a_refresher(client: OAuthClient) -> None:
    refresher: Refresher = client
    assert refresher is client
    assert "rt" not in repr(client) and ISSUER in repr(client)


async def test_exchange_code_returns_a_validated_token_set(
    fake_as: FakeAS, client: OAuthClient, config: ClientConfig, clock: FakeClock
) -> None:
    fake_as.token = lambda _r: _tokens(fake_as, config.client_id, clock, nonce=NONCE)
    tokens = await client.exchange_code("code-1", code_verifier="v" * 43, nonce=NONCE)
    assert tokens.access_token == "at-new" and tokens.refresh_token == "rt-new"
    assert tokens.expires_at == clock.now() + 3600 and tokens.received_at == clock.now()
    assert tokens.subject == SUBJECT and tokens.scope == config.scope
    assert "at-new" not in repr(tokens)
    assert [r.url.path for r in fake_as.requests] == [
        "/.well-known/openid-configuration", "/oidc/token", "/oidc/jwks",
    ]  # fmt: skip


async def test_b06_exchange_with_wrong_nonce_returns_nothing(
    fake_as: FakeAS, client: OAuthClient, config: ClientConfig, clock: FakeClock
) -> None:
    fake_as.token = lambda _r: _tokens(fake_as, config.client_id, clock, nonce="other-nonce")
    with pytest.raises(TokenValidationError) as info:
        await client.exchange_code("code-1", code_verifier=None, nonce=NONCE)
    assert info.value.reason == "nonce_mismatch"


async def test_exchange_without_id_token_under_openid_scope_is_rejected(
    fake_as: FakeAS, client: OAuthClient, config: ClientConfig, clock: FakeClock
) -> None:
    fake_as.token = lambda _r: _tokens(fake_as, config.client_id, clock, drop_id_token=True)
    with pytest.raises(TokenValidationError) as info:
        await client.exchange_code("code-1", code_verifier=None, nonce=NONCE)
    assert info.value.reason == "missing_id_token"


async def test_a08a_refresh_without_refresh_token_keeps_the_old_one(
    fake_as: FakeAS, client: OAuthClient, config: ClientConfig, clock: FakeClock
) -> None:
    fake_as.token = lambda _r: _tokens(fake_as, config.client_id, clock, with_rt=False)
    tokens = await client.refresh("rt-old", subject=SUBJECT)
    assert tokens.refresh_token == "rt-old" and tokens.access_token == "at-new"
    assert tokens.subject == SUBJECT


async def test_a08b_refresh_returns_the_rotated_refresh_token(
    fake_as: FakeAS, client: OAuthClient, config: ClientConfig, clock: FakeClock
) -> None:
    fake_as.token = lambda _r: _tokens(fake_as, config.client_id, clock)
    tokens = await client.refresh("rt-old", subject=SUBJECT)
    assert tokens.refresh_token == "rt-new"
    (form,) = fake_as.token_forms()
    assert form["refresh_token"] == "rt-old"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://other.example.org"}, "iss_mismatch"),
        ({"sub": "did:key:zDnaeX"}, "sub_mismatch"),
    ],
)
async def test_a08c_refreshed_id_token_with_other_iss_or_sub_is_rejected(
    fake_as: FakeAS,
    client: OAuthClient,
    config: ClientConfig,
    clock: FakeClock,
    claims: dict[str, Any],
    reason: str,
) -> None:
    fake_as.token = lambda _r: _tokens(fake_as, config.client_id, clock, **claims)
    with pytest.raises(TokenValidationError) as info:
        await client.refresh("rt-old", subject=SUBJECT)
    assert info.value.reason == reason


async def test_refresh_without_id_token_is_accepted(
    fake_as: FakeAS, client: OAuthClient, config: ClientConfig, clock: FakeClock
) -> None:
    fake_as.token = lambda _r: _tokens(fake_as, config.client_id, clock, drop_id_token=True)
    tokens = await client.refresh("rt-old", subject=SUBJECT)
    assert tokens.id_token is None and dict(tokens.id_claims) == {}


async def test_a05_refresh_invalid_grant_through_the_client(
    fake_as: FakeAS, client: OAuthClient
) -> None:
    fake_as.token = lambda _r: httpx.Response(400, json={"error": "invalid_grant"})
    with pytest.raises(InvalidGrant):
        await client.refresh("rt-old", subject=SUBJECT)
    assert len(fake_as.token_forms()) == 1


# --- PAR -----------------------------------------------------------------------------------------

REQUEST_OBJECT = "eyJhbGciOiJFUzI1NiJ9.eyJhIjoxfQ.c2ln"


async def test_par_returns_request_uri_and_expiry(
    fake_as: FakeAS, client: OAuthClient, config: ClientConfig
) -> None:
    urn = "urn:ietf:params:oauth:request_uri:6esc_11ACC5bwc014ltc14eY22c"
    fake_as.par = lambda _r: httpx.Response(201, json={"request_uri": urn, "expires_in": 60})
    assert await client.push_authorization_request(REQUEST_OBJECT) == (urn, 60)
    (request,) = [r for r in fake_as.requests if r.url.path == "/oidc/par"]
    form = form_of(request)
    assert set(form) == {"request", "client_id", "client_assertion_type", "client_assertion"}
    assert form["request"] == REQUEST_OBJECT and form["client_id"] == config.client_id
    assert form["client_assertion_type"] == JWT_BEARER
    assert unverified_parts(form["client_assertion"])[1]["aud"] == ISSUER


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in": 60},
        {"request_uri": "", "expires_in": 60},
        {"request_uri": "u"},
        {"request_uri": "u", "expires_in": 0},
        {"request_uri": "u", "expires_in": "60"},
    ],
)
async def test_par_malformed_response_is_rejected(
    fake_as: FakeAS, client: OAuthClient, body: dict[str, Any]
) -> None:
    fake_as.par = lambda _r: httpx.Response(201, json=body)
    with pytest.raises(UnexpectedResponse):
        await client.push_authorization_request(REQUEST_OBJECT)


async def test_par_errors_are_typed(fake_as: FakeAS, client: OAuthClient) -> None:
    fake_as.par = lambda _r: httpx.Response(400, json={"error": "invalid_request_object"})
    with pytest.raises(OAuthErrorResponse) as info:
        await client.push_authorization_request(REQUEST_OBJECT)
    assert info.value.error == "invalid_request_object"
    fake_as.par = lambda _r: httpx.Response(403)
    with pytest.raises(UnexpectedResponse) as unexpected:
        await client.push_authorization_request(REQUEST_OBJECT)
    assert unexpected.value.status_code == 403
    fake_as.par = lambda _r: httpx.Response(503)
    with pytest.raises(AuthServerUnavailable):
        await client.push_authorization_request(REQUEST_OBJECT)
    with pytest.raises(InvalidArgument):
        await client.push_authorization_request("not-a-jws")


async def test_par_without_endpoint_is_a_discovery_error(
    fake_as: FakeAS, client: OAuthClient
) -> None:
    del fake_as.metadata["pushed_authorization_request_endpoint"]
    with pytest.raises(DiscoveryError) as info:
        await client.push_authorization_request(REQUEST_OBJECT)
    assert info.value.reason == "no_par_endpoint"


# --- DOME compatibility gate (DOME-PROFILE.md, bug 1) --------------------------------------------


async def test_dome_refresh_waits_while_a_code_exchange_is_pending(
    fake_as: FakeAS, client: OAuthClient, config: ClientConfig, clock: FakeClock
) -> None:
    fake_as.token = lambda _r: _tokens(fake_as, config.client_id, clock)
    await client.metadata()
    async with client.exchange_gate():
        async with client.exchange_gate():  # several logins may be pending at once
            task = asyncio.create_task(client.refresh("rt-old", subject=SUBJECT))
            for _ in range(20):
                await asyncio.sleep(0)
            assert client.pending_exchanges == 2
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()
        assert fake_as.token_forms() == []
    tokens = await task
    assert tokens.refresh_token == "rt-new"
    assert len(fake_as.token_forms()) == 1


async def test_dome_gate_off_when_compat_disabled(
    fake_as: FakeAS, http: httpx.AsyncClient, signer: SoftSigner, clock: FakeClock
) -> None:
    config = ClientConfig(
        issuer=ISSUER, client_id=signer.kid, redirect_uri=REDIRECT_URI, dome_compat=False
    )
    client = OAuthClient(config, http, signer, clock, sleep=Sleeps())
    fake_as.token = lambda _r: _tokens(fake_as, config.client_id, clock)
    async with client.exchange_gate():
        tokens = await client.refresh("rt-old", subject=SUBJECT)
    assert tokens.access_token == "at-new"


async def test_the_metadata_is_cached_for_the_ttl_of_the_client_timings(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    clock: FakeClock,
) -> None:
    client = OAuthClient(config, http, signer, clock, timings=ClientTimings(metadata_ttl=30.0))
    discovery = "/.well-known/openid-configuration"
    await client.metadata()
    clock.advance(29)
    await client.metadata()
    assert [r.url.path for r in fake_as.requests] == [discovery]
    clock.advance(2)  # past the 30 s (the default is an hour)
    await client.metadata()
    assert [r.url.path for r in fake_as.requests] == [discovery, discovery]


async def test_dome_gate_wait_is_bounded(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    clock: FakeClock,
) -> None:
    client = OAuthClient(
        config, http, signer, clock, sleep=Sleeps(), timings=ClientTimings(gate_wait_timeout=0.01)
    )
    async with client.exchange_gate():
        with pytest.raises(AuthServerUnavailable):
            await client.refresh("rt-old", subject=SUBJECT)
    assert fake_as.token_forms() == []


async def test_exchange_code_holds_the_gate_itself(
    fake_as: FakeAS, client: OAuthClient, config: ClientConfig, clock: FakeClock
) -> None:
    seen: list[int] = []

    def respond(_r: httpx.Request) -> httpx.Response:
        seen.append(client.pending_exchanges)
        return _tokens(fake_as, config.client_id, clock, nonce=NONCE)

    fake_as.token = respond
    await client.exchange_code("code-1", code_verifier=None, nonce=NONCE)
    assert seen == [1] and client.pending_exchanges == 0


# --- spans and trace context ----------------------------------------------------------------------


async def test_spans_and_traceparent_hold_no_secrets(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    clock: FakeClock,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = OAuthClient(
        config,
        http,
        signer,
        clock,
        sleep=Sleeps(),
        reporting=ClientReporting(tracer_provider=provider),
    )
    fake_as.token = lambda _r: _tokens(fake_as, config.client_id, clock, nonce=NONCE)
    with provider.get_tracer("test").start_as_current_span("caller") as parent:
        trace_id = format(parent.get_span_context().trace_id, "032x")
        await client.exchange_code("secret-code", code_verifier="v" * 43, nonce=NONCE)
        fake_as.token = lambda _r: httpx.Response(400, json={"error": "invalid_grant"})
        with pytest.raises(InvalidGrant):
            await client.refresh("secret-rt", subject=SUBJECT)
    for request in fake_as.requests:
        assert request.headers["traceparent"].split("-")[1] == trace_id
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"oauth.discovery", "oauth.jwks", "oauth.token_request"} <= set(spans)
    token_spans = [s for s in exporter.get_finished_spans() if s.name == "oauth.token_request"]
    code_span, refresh_span = token_spans
    assert code_span.attributes is not None and refresh_span.attributes is not None
    assert code_span.attributes["oauth.grant_type"] == "authorization_code"
    assert code_span.attributes["http.response.status_code"] == 200
    assert refresh_span.attributes["oauth.grant_type"] == "refresh_token"
    assert refresh_span.attributes["oauth.error"] == "invalid_grant"
    assert refresh_span.attributes["oauth.attempt"] == 1
    assert refresh_span.status.status_code == trace.StatusCode.ERROR
    dump = repr(
        [(s.name, dict(s.attributes or {}), s.events) for s in exporter.get_finished_spans()]
    )
    for secret in ("secret-code", "secret-rt", "at-new", "rt-new", "eyJ", NONCE):
        assert secret not in dump
