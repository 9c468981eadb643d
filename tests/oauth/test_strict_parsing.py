# ruff: noqa: PLR0917  (pytest injects fixtures as positional parameters)
"""Strict parsing of everything the AS sends (issue 8 section 4; RFC 8725; catalogue A04, B-rows).

Token response, discovery metadata, JWKS and the id_token header and claims go through the one
strict loader: duplicate member names, deep nesting, bad UTF-8, lone surrogates and oversize
input end in the typed error of their context, never in an uncaught exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from broker import strict_json
from broker.errors import TokenValidationError, UnexpectedResponse
from broker.jose import b64url
from broker.keys.soft import SoftSigner, es256_raw_signature
from broker.oauth import http as bounded
from broker.oauth import id_token as id_token_module
from broker.oauth import token_endpoint
from broker.oauth.config import ClientConfig
from broker.oauth.id_token import VC_JSON_ERROR_CLAIM, validate_id_token
from broker.oauth.metadata import JwksCache, MetadataCache, ServerMetadata
from tests.clock import FakeClock
from tests.oauth.fakeas import ISSUER, FakeAS

NONCE = "n-strict-0S6_WzA2Mj"
DEEP = 10_000
JSON = {"content-type": "application/json"}


def _raw_token(fake_as: FakeAS, header: bytes, payload: bytes) -> str:
    """A compact JWS over exactly these header and payload bytes, signed by the fake AS."""
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    der = fake_as.key.private.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    return f"{signing_input}.{b64url(es256_raw_signature(der))}"


def _header(fake_as: FakeAS, **extra: Any) -> bytes:
    return json.dumps({"alg": "ES256", "kid": fake_as.key.kid, **extra}).encode()


def _claims(config: ClientConfig, clock: FakeClock, **extra: Any) -> dict[str, Any]:
    now = int(clock.now())
    return {
        "iss": ISSUER,
        "aud": config.client_id,
        "sub": "did:key:zDnaeUser",
        "iat": now,
        "exp": now + 60,
        "nonce": NONCE,
        **extra,
    }


@pytest.fixture
def jwks(http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock) -> JwksCache:
    return JwksCache(http, MetadataCache(http, config, clock), config, clock)


async def _validate(
    token: str, jwks: JwksCache, config: ClientConfig, clock: FakeClock, **kw: Any
) -> dict[str, Any]:
    return await validate_id_token(
        token,
        jwks=jwks,
        issuer=ISSUER,
        client_id=config.client_id,
        clock=clock,
        skew=60,
        nonce=NONCE,
        **kw,
    )


async def _reject(
    token: str, reason: str, jwks: JwksCache, config: ClientConfig, clock: FakeClock, **kw: Any
) -> TokenValidationError:
    with pytest.raises(TokenValidationError) as info:
        await _validate(token, jwks, config, clock, **kw)
    assert info.value.reason == reason
    return info.value


# --- id_token header typ (RFC 8725 sections 3.11, 3.12) ----------------------------------------


@pytest.mark.parametrize(
    "typ",
    ["at+jwt", "dpop+jwt", "oauth-authz-req+jwt", "application/at+jwt", "JOSE", "jwt ", "", 1],
)
async def test_id_token_typ_of_another_kind_of_jwt_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock, typ: Any
) -> None:
    payload = json.dumps(_claims(config, clock)).encode()
    token = _raw_token(fake_as, _header(fake_as, typ=typ), payload)
    await _reject(token, "typ_not_allowed", jwks, config, clock)
    assert fake_as.count("/oidc/jwks") == 0  # refused before any key lookup


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "Jwt", "application/jwt"])
async def test_id_token_typ_absent_or_jwt_is_accepted(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock, typ: str | None
) -> None:
    header = _header(fake_as) if typ is None else _header(fake_as, typ=typ)
    token = _raw_token(fake_as, header, json.dumps(_claims(config, clock)).encode())
    claims = await _validate(token, jwks, config, clock)
    assert claims["iss"] == ISSUER


# --- id_token duplicate members, nesting, encoding, size ---------------------------------------


async def test_b03_duplicate_iss_in_id_token_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    """``iss`` twice, the last one right: a last-wins parser would accept it."""
    body = json.dumps(_claims(config, clock))
    payload = ('{"iss":"https://evil.example.org",' + body[1:]).encode()
    assert json.loads(payload)["iss"] == ISSUER  # what a lenient parser sees
    error = await _reject(
        _raw_token(fake_as, _header(fake_as), payload), "malformed", jwks, config, clock
    )
    assert "duplicate" in str(error)


async def test_duplicate_header_member_in_id_token_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    header = b'{"alg":"none","alg":"ES256","kid":' + json.dumps(fake_as.key.kid).encode() + b"}"
    payload = json.dumps(_claims(config, clock)).encode()
    await _reject(_raw_token(fake_as, header, payload), "malformed", jwks, config, clock)


@pytest.mark.parametrize("where", ["header", "payload", "claim"])
async def test_deeply_nested_id_token_is_a_typed_error(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock, where: str
) -> None:
    deep = "[" * DEEP + "]" * DEEP
    header = _header(fake_as)
    payload = json.dumps(_claims(config, clock)).encode()
    if where == "header":
        header = header[:-1] + b',"x":' + deep.encode() + b"}"
    elif where == "payload":
        payload = b'{"x":' + deep.encode() + b"," + payload[1:]
    else:  # unterminated, inside a claim value
        payload = payload[:-1] + b',"x":' + b"[" * DEEP + b"}"
    await _reject(_raw_token(fake_as, header, payload), "malformed", jwks, config, clock)


async def test_deeply_nested_vc_json_is_recorded_not_a_crash(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    vc_json = "[" * DEEP + "]" * DEEP
    token = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE, vc_json=vc_json)
    claims = await _validate(token, jwks, config, clock)
    assert claims[VC_JSON_ERROR_CLAIM] == "not_json"


@pytest.mark.parametrize(
    "payload_tail",
    [b',"name":"\xc3\x28"}', b',"name":"\xed\xa0\x80"}', b',"name":"\\ud800"}', b',"n":NaN}'],
    ids=["bad_utf8", "encoded_surrogate", "lone_surrogate_escape", "nan"],
)
async def test_badly_encoded_id_token_is_rejected(
    fake_as: FakeAS,
    jwks: JwksCache,
    config: ClientConfig,
    clock: FakeClock,
    payload_tail: bytes,
) -> None:
    payload = json.dumps(_claims(config, clock)).encode()[:-1] + payload_tail
    await _reject(_raw_token(fake_as, _header(fake_as), payload), "malformed", jwks, config, clock)


async def test_5mb_id_token_is_rejected_before_it_is_decoded(
    fake_as: FakeAS,
    jwks: JwksCache,
    config: ClientConfig,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A validly signed token: without the size check it would be accepted.
    token = _raw_token(
        fake_as,
        _header(fake_as, typ="JWT"),
        json.dumps(_claims(config, clock, pad="x" * 5_000_000)).encode(),
    )
    assert len(token) > 5_000_000
    calls: list[str] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    for module, name in (
        (id_token_module, "decode_json_segment"),
        (id_token_module, "b64url_decode_strict"),
        (strict_json, "loads"),
    ):
        monkeypatch.setattr(
            module, name, spy(name, getattr(module, name, lambda *a, **k: None)), raising=False
        )
    await _reject(token, "too_large", jwks, config, clock)
    assert calls == []
    assert fake_as.count("/oidc/jwks") == 0
    # The cap is the id_token's, configurable; under a larger cap the same token parses.
    claims = await _validate(token, jwks, config, clock, max_bytes=len(token))
    assert len(claims["pad"]) == 5_000_000


async def test_id_token_size_cap_comes_from_the_client_config(
    fake_as: FakeAS, config: ClientConfig, clock: FakeClock
) -> None:
    assert config.max_jwt_bytes == strict_json.JWT_MAX_BYTES == 64 * 1024
    assert config.max_response_bytes == strict_json.DOCUMENT_MAX_BYTES == 1024 * 1024


# --- token response ----------------------------------------------------------------------------


def _token_body_responder(body: bytes) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _r: httpx.Response(200, content=body, headers=JSON)


@pytest.mark.parametrize(
    "body",
    [
        b'{"access_token":"SECRET-AT1","token_type":"Bearer","expires_in":300,"access_token":"SECRET-AT2"}',
        b'{"access_token":"SECRET-AT","token_type":"Bearer","x":'
        + b"[" * DEEP
        + b"]" * DEEP
        + b"}",
        b'{"access_token":"SECRET-AT","token_type":"Bearer","x":' + b"{" * DEEP,
        b'{"access_token":"SECRET-AT\xff","token_type":"Bearer"}',
        b'{"access_token":"SECRET-AT\\udc00","token_type":"Bearer"}',
        b'{"access_token":"SECRET-AT","token_type":"Bearer","expires_in":Infinity}',
    ],
    ids=[
        "duplicate_access_token",
        "deep",
        "deep_unterminated",
        "bad_utf8",
        "lone_surrogate",
        "inf",
    ],
)
async def test_a04_malformed_token_response_is_unexpected_response(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: FakeClock,
    body: bytes,
) -> None:
    fake_as.token = _token_body_responder(body)
    with pytest.raises(UnexpectedResponse) as info:
        await token_endpoint.exchange_code(
            http, signer, config, metadata, clock, code="code-1", code_verifier=None
        )
    assert info.value.status_code == 200
    assert "SECRET" not in str(info.value)


async def test_parse_json_object_uses_the_cap_the_body_was_read_under() -> None:
    body = json.dumps({"pad": "x" * 2000}).encode()
    resp = bounded.HttpResponse(200, httpx.Headers(JSON), body, "as.example", max_bytes=1024)
    with pytest.raises(UnexpectedResponse, match="too_large"):
        bounded.parse_json_object(resp)

    def handler(_r: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers=JSON)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        read = await bounded.request(http, "GET", "https://as.example/x", timeout=5, max_bytes=4096)
    assert read.max_bytes == 4096
    assert bounded.parse_json_object(read) == {"pad": "x" * 2000}


# --- discovery metadata and JWKS ---------------------------------------------------------------


def _metadata_bodies() -> list[bytes]:
    good = json.dumps(FakeAS().metadata).encode()
    return [
        b'{"issuer":"https://evil.example.org",' + good[1:],  # issuer twice, last one right
        good[:-1] + b',"x":' + b"[" * DEEP + b"]" * DEEP + b"}",
        good[:-1] + b',"x":"\xc0\xaf"}',
    ]


@pytest.mark.parametrize("body", _metadata_bodies(), ids=["duplicate_issuer", "deep", "bad_utf8"])
async def test_a04_malformed_metadata_is_unexpected_response(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock, body: bytes
) -> None:
    fake_as.discovery = lambda _r: httpx.Response(200, content=body, headers=JSON)
    cache = MetadataCache(http, config, clock)
    with pytest.raises(UnexpectedResponse):
        await cache.get()
    fake_as.discovery = None
    assert (await cache.get()).issuer == ISSUER  # nothing was cached from the bad document


def _jwks_bodies(fake_as: FakeAS) -> list[bytes]:
    key = json.dumps(fake_as.key.jwk()).encode()
    return [
        b'{"keys":[],"keys":[' + key + b"]}",
        b'{"keys":[' + key[:-1] + b',"use":"enc","use":"sig"}]}',
        b'{"keys":[' + key + b'],"x":' + b"[" * DEEP + b"]" * DEEP + b"}",
        b'{"keys":[' + key + b'],"x":"\xff"}',
    ]


@pytest.mark.parametrize(
    "index", range(4), ids=["duplicate_keys", "duplicate_in_key", "deep", "bad_utf8"]
)
async def test_a04_malformed_jwks_is_unexpected_response(
    fake_as: FakeAS, config: ClientConfig, clock: FakeClock, index: int
) -> None:
    body = _jwks_bodies(fake_as)[index]

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oidc/jwks":
            fake_as.requests.append(request)
            return httpx.Response(200, content=body, headers=JSON)
        return await fake_as.handle(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        jwks = JwksCache(http, MetadataCache(http, config, clock), config, clock)
        with pytest.raises(UnexpectedResponse):
            await jwks.key_for(fake_as.key.kid)
    assert fake_as.count("/oidc/jwks") == 1
