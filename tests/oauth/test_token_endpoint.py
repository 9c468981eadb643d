# ruff: noqa: PLR0917  (pytest injects fixtures as positional parameters)
"""Token endpoint (RFC 6749 4.1.3, 5.1, 5.2, 6) against a hostile AS: catalogue A03-A06, C08,
and DOME fidelity of the token request."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from jwcrypto import jwk, jws

from broker.errors import (
    AuthServerUnavailable,
    ClientAuthenticationFailed,
    InvalidArgument,
    InvalidGrant,
    OAuthErrorResponse,
    UnexpectedResponse,
)
from broker.jose import unverified_parts
from broker.keys.didkey import jwk_from_did
from broker.keys.soft import SoftSigner
from broker.oauth import token_endpoint
from broker.oauth.client_auth import JWT_BEARER
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import ServerMetadata, parse_metadata
from tests.clock import FakeClock
from tests.oauth.fakeas import ISSUER, REDIRECT_URI, FakeAS, form_of, metadata_doc

VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"


def token_json(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "access_token": "at-1",
        "refresh_token": "rt-2",
        "token_type": "Bearer",
        "expires_in": 3600,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def ok(**overrides: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _r: httpx.Response(200, json=token_json(**overrides))


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)


def sequence(
    *responses: httpx.Response | type[Exception],
) -> Callable[[httpx.Request], httpx.Response]:
    queue = list(responses)

    def respond(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0)
        if isinstance(item, httpx.Response):
            return item
        raise item("injected", request=request)  # type: ignore[call-arg]

    return respond


async def _exchange(
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> token_endpoint.RawTokenResponse:
    return await token_endpoint.exchange_code(
        http, signer, config, metadata, clock, code="code-1", code_verifier=VERIFIER
    )


async def _refresh(
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    sleeps: Sleeps,
) -> token_endpoint.RawTokenResponse:
    return await token_endpoint.refresh(
        http,
        signer,
        config,
        metadata,
        clock,
        refresh_token="rt-1",
        sleep=sleeps,
        jitter=lambda: 0.5,
    )


def _verify_assertion(assertion: str, did: str) -> dict[str, Any]:
    """Independent verification with jwcrypto and the key derived from the did."""
    token = jws.JWS()
    token.deserialize(assertion)
    token.verify(jwk.JWK(**jwk_from_did(did)), alg="ES256")
    claims: dict[str, Any] = json.loads(token.payload)
    return claims


async def test_dome_fidelity_token_request(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    """DOME-PROFILE.md, token endpoint: form fields, assertion header and claims."""
    fake_as.token = ok()
    raw = await _exchange(http, signer, config, metadata, clock)
    assert raw.access_token == "at-1"
    (request,) = [r for r in fake_as.requests if r.url.path == "/oidc/token"]
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = form_of(request)
    assert set(form) == {
        "grant_type",
        "code",
        "redirect_uri",
        "code_verifier",
        "client_id",
        "client_assertion_type",
        "client_assertion",
    }
    assert form["grant_type"] == "authorization_code"
    assert form["code"] == "code-1"
    assert form["redirect_uri"] == REDIRECT_URI
    assert form["code_verifier"] == VERIFIER
    assert form["client_id"] == config.client_id
    assert form["client_assertion_type"] == JWT_BEARER
    header, claims = unverified_parts(form["client_assertion"])
    assert header == {"alg": "ES256", "typ": "JWT", "kid": config.client_id}
    assert config.client_id.startswith("did:key:zDn") and "#" not in header["kid"]
    assert set(claims) == {"iss", "sub", "aud", "iat", "exp", "jti"}
    assert claims["iss"] == claims["sub"] == config.client_id
    assert claims["aud"] == ISSUER  # a single string
    assert claims["iat"] == int(clock.now())
    assert claims["exp"] == claims["iat"] + 60
    assert _verify_assertion(form["client_assertion"], config.client_id) == claims


async def test_refresh_form_has_no_redirect_uri_nor_state(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = ok()
    await _refresh(http, signer, config, metadata, clock, Sleeps())
    (form,) = fake_as.token_forms()
    assert set(form) == {
        "grant_type",
        "refresh_token",
        "client_id",
        "client_assertion_type",
        "client_assertion",
    }
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "rt-1"


async def test_assertion_aud_is_the_issuer_string_even_with_a_foreign_token_endpoint(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    clock: FakeClock,
) -> None:
    """The metadata names another host's token endpoint (allowed by the operator): the
    assertion still names the issuer, as one JSON string, never the endpoint URL."""
    config = ClientConfig(
        issuer=ISSUER,
        client_id=signer.kid,
        redirect_uri=REDIRECT_URI,
        allowed_endpoint_origins=frozenset({"https://token.example.net"}),
    )
    doc = metadata_doc()
    doc["token_endpoint"] = "https://token.example.net/oidc/token"
    metadata = parse_metadata(doc, config)
    fake_as.token = ok()
    await _exchange(http, signer, config, metadata, clock)
    (request,) = [r for r in fake_as.requests if r.url.path == "/oidc/token"]
    assert request.url.host == "token.example.net"
    aud = unverified_parts(form_of(request)["client_assertion"])[1]["aud"]
    assert aud == ISSUER and isinstance(aud, str)


def test_the_token_endpoint_audience_option_is_gone(signer: SoftSigner) -> None:
    with pytest.raises(TypeError):
        ClientConfig(  # type: ignore[call-arg]
            issuer=ISSUER,
            client_id=signer.kid,
            redirect_uri=REDIRECT_URI,
            assertion_audience="token_endpoint",
        )


# --- A03: lenient where the RFC allows ---------------------------------------------------------


async def test_a03a_missing_expires_in_gets_the_conservative_default(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = ok(expires_in=None)
    raw = await _exchange(http, signer, config, metadata, clock)
    assert raw.expires_in == config.default_expires_in == 300
    assert raw.expires_in_defaulted


async def test_a03b_missing_scope_means_the_requested_scope(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = ok()
    raw = await _exchange(http, signer, config, metadata, clock)
    assert raw.scope == "openid learcredential" and raw.scope_defaulted
    fake_as.token = ok(scope="openid")
    raw = await _exchange(http, signer, config, metadata, clock)
    assert raw.scope == "openid" and not raw.scope_defaulted


@pytest.mark.parametrize("token_type", ["bEARER", "bearer", "Bearer"])
async def test_a03c_token_type_is_case_insensitive(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    token_type: str,
) -> None:
    fake_as.token = ok(token_type=token_type)
    assert (await _exchange(http, signer, config, metadata, clock)).token_type == "Bearer"


@pytest.mark.parametrize("token_type", ["dPoP", "DPoP", "mac", None, 1])
async def test_a03c_unsupported_token_type_is_rejected(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    token_type: Any,
) -> None:
    body = token_json()
    body["token_type"] = token_type
    fake_as.token = lambda _r: httpx.Response(200, json=body)
    with pytest.raises(UnexpectedResponse) as info:
        await _exchange(http, signer, config, metadata, clock)
    assert info.value.status_code == 200


@pytest.mark.parametrize("value", ["3600", 3600.0, 1, 31_536_000])
async def test_a03_expires_in_numeric_forms_accepted(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    value: Any,
) -> None:
    fake_as.token = ok(expires_in=value)
    assert (await _exchange(http, signer, config, metadata, clock)).expires_in == int(value)


# --- A04: malformed, oversized, slow, redirected -----------------------------------------------


@pytest.mark.parametrize(
    "value",
    [-1, 0, "x", 1e12, 31_536_001, True, 12.5, "", [3600]],
)
async def test_a04_bad_expires_in_is_rejected(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    value: Any,
) -> None:
    fake_as.token = ok(expires_in=value)
    with pytest.raises(UnexpectedResponse):
        await _exchange(http, signer, config, metadata, clock)


@pytest.mark.parametrize(
    "body",
    [
        {"refresh_token": "rt", "token_type": "Bearer", "expires_in": 60},  # no access_token
        {"access_token": "", "token_type": "Bearer"},
        {"access_token": 12, "token_type": "Bearer"},
        {"access_token": "at", "token_type": "Bearer", "refresh_token": 5},
        {"access_token": "at", "token_type": "Bearer", "id_token": ""},
        {"access_token": "at", "token_type": "Bearer", "scope": ["openid"]},
    ],
)
async def test_a04_json_without_a_valid_access_token_is_rejected(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    body: dict[str, Any],
) -> None:
    fake_as.token = lambda _r: httpx.Response(200, json=body)
    with pytest.raises(UnexpectedResponse) as info:
        await _exchange(http, signer, config, metadata, clock)
    assert info.value.retryable  # callers see UNAVAILABLE, not INTERNAL


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b"<html><body>Please log in to the hotel wifi</body></html>", "text/html"),
        (b"<html>portal</html>", "application/json"),
        (b"not json at all", "text/plain"),
        (b'["a", "list"]', "application/json"),
        (b'{"access_token": NaN}', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"", "application/json"),
    ],
)
async def test_a04_html_or_non_json_body_is_rejected(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    content: bytes,
    ctype: str,
) -> None:
    fake_as.token = lambda _r: httpx.Response(200, content=content, headers={"content-type": ctype})
    with pytest.raises(UnexpectedResponse) as info:
        await _exchange(http, signer, config, metadata, clock)
    assert info.value.status_code == 200


async def test_a04_10_mb_body_is_cut_at_the_limit(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    sent: list[int] = []

    async def ten_megabytes() -> AsyncIterator[bytes]:
        for _ in range(160):  # 160 x 64 KiB = 10 MiB, no content-length
            sent.append(1)
            yield b"{" * 65536

    fake_as.token = lambda _r: httpx.Response(
        200, content=ten_megabytes(), headers={"content-type": "application/json"}
    )
    with pytest.raises(UnexpectedResponse):
        await _exchange(http, signer, config, metadata, clock)
    assert len(sent) < 20  # stopped reading just past 1 MB, not at 10 MB


async def test_a04_declared_oversized_body_is_refused_before_reading(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = lambda _r: httpx.Response(200, content=b"x" * 10_000_000)
    with pytest.raises(UnexpectedResponse):
        await _exchange(http, signer, config, metadata, clock)


async def test_a04_redirect_to_another_host_is_not_followed(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = lambda _r: httpx.Response(302, headers={"location": "https://evil.example/t"})
    with pytest.raises(UnexpectedResponse) as info:
        await _exchange(http, signer, config, metadata, clock)
    assert info.value.status_code == 302
    assert all(r.url.host == "verifier.example.org" for r in fake_as.requests)
    assert len(fake_as.requests) == 1


async def test_a04_slow_as_beyond_the_timeout_is_unavailable(
    fake_as: FakeAS,
    signer: SoftSigner,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    config = ClientConfig(
        issuer=ISSUER, client_id=signer.kid, redirect_uri=REDIRECT_URI, http_timeout=0.05
    )
    never = asyncio.Event()

    async def hang(_r: httpx.Request) -> httpx.Response:
        await never.wait()
        return httpx.Response(200, json=token_json())

    fake_as.token = hang
    async with fake_as.client() as http:
        with pytest.raises(AuthServerUnavailable) as info:
            await _exchange(http, signer, config, metadata, clock)
    assert info.value.retryable and info.value.status_code is None


async def test_a04_trickling_body_is_bounded_by_the_total_timeout(
    fake_as: FakeAS,
    signer: SoftSigner,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    config = ClientConfig(
        issuer=ISSUER, client_id=signer.kid, redirect_uri=REDIRECT_URI, http_timeout=0.05
    )
    never = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"access_token": "a'
        await never.wait()  # the rest never arrives
        yield b'"}'

    fake_as.token = lambda _r: httpx.Response(200, content=trickle())
    async with fake_as.client() as http:
        with pytest.raises(AuthServerUnavailable):
            await _exchange(http, signer, config, metadata, clock)


# --- A05 / DOME errors --------------------------------------------------------------------------


async def test_a05_refresh_invalid_grant_is_final_and_not_retried(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = lambda _r: httpx.Response(
        400, json={"error": "invalid_grant", "error_description": "reused"}
    )
    sleeps = Sleeps()
    with pytest.raises(InvalidGrant) as info:
        await _refresh(http, signer, config, metadata, clock, sleeps)
    assert info.value.error == "invalid_grant" and info.value.status_code == 400
    assert not info.value.retryable
    assert len(fake_as.token_forms()) == 1 and sleeps.calls == []


@pytest.mark.parametrize("status", [400, 403])
async def test_dome_empty_4xx_on_refresh_means_the_grant_is_dead(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    status: int,
) -> None:
    fake_as.token = lambda _r: httpx.Response(status)
    sleeps = Sleeps()
    with pytest.raises(InvalidGrant) as info:
        await _refresh(http, signer, config, metadata, clock, sleeps)
    assert info.value.status_code == status
    assert len(fake_as.token_forms()) == 1 and sleeps.calls == []


async def test_dome_empty_403_on_code_exchange_is_invalid_grant(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = lambda _r: httpx.Response(403)
    with pytest.raises(InvalidGrant) as info:
        await _exchange(http, signer, config, metadata, clock)
    assert info.value.status_code == 403


async def test_oauth_error_other_than_invalid_grant_is_typed_and_not_retried(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = lambda _r: httpx.Response(400, json={"error": "invalid_scope"})
    sleeps = Sleeps()
    with pytest.raises(OAuthErrorResponse) as info:
        await _refresh(http, signer, config, metadata, clock, sleeps)
    assert type(info.value) is OAuthErrorResponse and not info.value.retryable
    assert info.value.error == "invalid_scope" and info.value.status_code == 400
    assert sleeps.calls == []


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(401, json={"error": "invalid_client", "error_description": "kid"}),
        httpx.Response(400, json={"error": "invalid_client"}),
        httpx.Response(401),  # bare: not DOME's dead grant, never bury grants for it
        httpx.Response(401, text="<html>Unauthorized</html>"),
    ],
    ids=["401_invalid_client", "400_invalid_client", "bare_401", "html_401"],
)
async def test_client_authentication_failure_is_typed_logged_and_not_retried(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    answer: httpx.Response,
) -> None:
    fake_as.token = lambda _r: answer
    sleeps = Sleeps()
    with caplog.at_level(logging.ERROR), pytest.raises(ClientAuthenticationFailed) as info:
        await _refresh(http, signer, config, metadata, clock, sleeps)
    assert info.value.reason == "client_authentication_failed" and not info.value.retryable
    assert info.value.status_code == answer.status_code
    assert len(fake_as.token_forms()) == 1 and sleeps.calls == []
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    text = record.getMessage()
    assert "Trusted Services List" in text and "jwkSetUrl" in text and config.client_id in text
    assert "client_assertion" not in text and "rt-1" not in text


async def test_unexpected_status_without_oauth_body_is_unexpected_response(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = lambda _r: httpx.Response(404, text="not here")
    with pytest.raises(UnexpectedResponse) as info:
        await _exchange(http, signer, config, metadata, clock)
    assert info.value.status_code == 404


async def test_code_exchange_is_never_retried(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = lambda _r: httpx.Response(503)
    with pytest.raises(AuthServerUnavailable) as info:
        await _exchange(http, signer, config, metadata, clock)
    assert info.value.status_code == 503
    assert len(fake_as.token_forms()) == 1


async def test_empty_code_or_refresh_token_is_an_invalid_argument(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    with pytest.raises(InvalidArgument):
        await token_endpoint.exchange_code(
            http, signer, config, metadata, clock, code="", code_verifier=None
        )
    with pytest.raises(InvalidArgument):
        await token_endpoint.refresh(
            http, signer, config, metadata, clock, refresh_token="", sleep=Sleeps()
        )
    assert fake_as.requests == []


# --- A06: retries for refresh ------------------------------------------------------------------


async def test_a06_429_retry_after_is_honoured(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = sequence(
        httpx.Response(429, headers={"retry-after": "30"}),
        httpx.Response(200, json=token_json()),
    )
    sleeps = Sleeps()
    raw = await _refresh(http, signer, config, metadata, clock, sleeps)
    assert raw.access_token == "at-1"
    assert sleeps.calls == [30.0]


async def test_a06_retry_after_as_http_date(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    when = format_datetime(datetime.fromtimestamp(clock.now() + 20, tz=UTC), usegmt=True)
    fake_as.token = sequence(
        httpx.Response(503, headers={"retry-after": when}), httpx.Response(200, json=token_json())
    )
    sleeps = Sleeps()
    await _refresh(http, signer, config, metadata, clock, sleeps)
    assert sleeps.calls == [20.0]


async def test_a06_503_without_retry_after_backs_off_exponentially_then_gives_up(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = lambda _r: httpx.Response(503)
    sleeps = Sleeps()
    with pytest.raises(AuthServerUnavailable) as info:
        await _refresh(http, signer, config, metadata, clock, sleeps)
    assert info.value.status_code == 503
    # base 5 s doubling, jitter 0.5 -> +12.5 %; first retry >= 5 s; 3 attempts in all
    assert sleeps.calls == [5.625, 11.25]
    assert len(fake_as.token_forms()) == 3


def test_a06_backoff_is_capped_and_jitter_bounded(config: ClientConfig) -> None:
    backoff = token_endpoint.retry_backoff(config)
    delays = [backoff.delay(n, 0.999) for n in range(1, 8)]
    assert delays[0] < 6.25 and delays[-1] == config.refresh_backoff_max
    assert all(backoff.delay(n, 0.0) >= 5.0 for n in range(1, 8))
    assert delays == sorted(delays)


@pytest.mark.parametrize("exc", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ConnectError])
async def test_a06_transport_failures_are_retried(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    exc: type[Exception],
) -> None:
    fake_as.token = sequence(exc, httpx.Response(200, json=token_json()))
    sleeps = Sleeps()
    assert (await _refresh(http, signer, config, metadata, clock, sleeps)).access_token == "at-1"
    assert sleeps.calls == [5.625]


async def test_a06_retry_after_beyond_the_cap_is_surfaced_not_slept(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = lambda _r: httpx.Response(429, headers={"retry-after": "600"})
    sleeps = Sleeps()
    with pytest.raises(AuthServerUnavailable) as info:
        await _refresh(http, signer, config, metadata, clock, sleeps)
    assert info.value.retry_after == 600.0 and info.value.status_code == 429
    assert sleeps.calls == [] and len(fake_as.token_forms()) == 1


async def test_c08_every_attempt_has_a_fresh_verifiable_assertion(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
) -> None:
    fake_as.token = sequence(
        httpx.Response(503), httpx.Response(500), httpx.Response(200, json=token_json())
    )
    await _refresh(http, signer, config, metadata, clock, Sleeps())
    fake_as.token = ok()
    await _exchange(http, signer, config, metadata, clock)
    forms = fake_as.token_forms()
    assert len(forms) == 4
    jtis = set()
    signatures = set()
    for form in forms:
        claims = _verify_assertion(form["client_assertion"], config.client_id)
        assert claims["iss"] == claims["sub"] == config.client_id
        assert claims["aud"] == ISSUER
        assert clock.now() < claims["exp"] <= clock.now() + 300
        assert isinstance(claims["iat"], int)
        jtis.add(claims["jti"])
        signatures.add(form["client_assertion"].rsplit(".", 1)[1])
    assert len(jtis) == 4 and len(signatures) == 4
