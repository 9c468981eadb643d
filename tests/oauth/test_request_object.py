"""Request objects (RFC 9101), authorization URLs and PKCE (RFC 7636): catalogue C04-C06 and
DOME fidelity of the request object."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from jwcrypto import jwk, jws

from broker.errors import ConfigError, InvalidArgument
from broker.jose import unverified_parts
from broker.keys.didkey import jwk_from_did
from broker.keys.soft import SoftKeyStore, SoftSigner
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import ServerMetadata
from broker.oauth.pkce import code_challenge_s256, new_code_verifier, new_pkce
from broker.oauth.request_object import (
    AuthorizationRequest,
    authorization_url,
    build_authorization_request,
    new_nonce,
    new_state,
    par_authorization_url,
    sign_request_object,
)
from tests.oauth.fakeas import ISSUER, REDIRECT_URI

NOW = 1_800_000_000.0


def _build(config: ClientConfig, metadata: ServerMetadata, **kw: Any) -> AuthorizationRequest:
    args: dict[str, Any] = {
        "state": new_state(),
        "nonce": new_nonce(),
        "code_challenge": new_pkce().challenge,
        "now": NOW,
        "jti": str(uuid.uuid4()),
    }
    args.update(kw)
    return build_authorization_request(config, metadata, **args)


def _verify(token: str, did: str) -> dict[str, Any]:
    """Independent verification (jwcrypto) keyed by the did:key public key."""
    obj = jws.JWS()
    obj.deserialize(token)
    obj.verify(jwk.JWK(**jwk_from_did(did)), alg="ES256")
    claims: dict[str, Any] = json.loads(obj.payload)
    return claims


def test_c04_pkce_verifier_and_challenge() -> None:
    seen = set()
    for _ in range(1000):
        pair = new_pkce()
        assert 43 <= len(pair.verifier) <= 128
        assert re.fullmatch(r"[A-Za-z0-9\-._~]+", pair.verifier)
        assert pair.method == "S256"
        digest = hashlib.sha256(pair.verifier.encode()).digest()
        assert pair.challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        seen.add(pair.verifier)
        assert pair.verifier not in repr(pair)
    assert len(seen) == 1000  # never reused
    assert len(base64.urlsafe_b64decode(new_code_verifier() + "=")) == 32  # 256 bits


def test_c04_rfc7636_appendix_b_vector() -> None:
    assert (
        code_challenge_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


@pytest.mark.parametrize("verifier", ["short", "a" * 129, "a" * 42 + "!", "é" * 43])
def test_c04_bad_verifier_is_rejected(verifier: str) -> None:
    with pytest.raises(InvalidArgument):
        code_challenge_s256(verifier)


async def test_c05_request_object_claims_and_header(
    signer: SoftSigner, config: ClientConfig, metadata: ServerMetadata
) -> None:
    """DOME fidelity + C05: header, claim set, lifetimes, verified by jwcrypto via the did."""
    req = _build(config, metadata)
    token = await sign_request_object(signer, req.claims)
    header, _ = unverified_parts(token)
    assert header == {"alg": "ES256", "typ": "oauth-authz-req+jwt", "kid": config.client_id}
    claims = _verify(token, config.client_id)
    assert claims == dict(req.claims)
    assert set(claims) == {
        "iss", "aud", "client_id", "response_type", "scope", "redirect_uri", "state", "nonce",
        "code_challenge", "code_challenge_method", "iat", "nbf", "exp", "jti",
    }  # fmt: skip
    assert claims["iss"] == claims["client_id"] == config.client_id
    assert claims["aud"] == ISSUER
    assert claims["response_type"] == "code"
    assert claims["scope"] == "openid learcredential"
    assert claims["redirect_uri"] == REDIRECT_URI
    assert claims["code_challenge_method"] == "S256"
    assert NOW < claims["exp"] <= NOW + 600
    assert NOW - 3600 <= claims["nbf"] <= NOW
    assert claims["iat"] == int(NOW)
    assert all(isinstance(claims[k], int) for k in ("iat", "nbf", "exp"))
    assert all(isinstance(v, str) for k, v in claims.items() if k not in ("iat", "nbf", "exp"))
    assert "sub" not in claims and "request" not in claims and "request_uri" not in claims


async def test_c05_jti_unique_across_requests(
    signer: SoftSigner, config: ClientConfig, metadata: ServerMetadata
) -> None:
    jtis = {_build(config, metadata).claims["jti"] for _ in range(100)}
    states = {new_state() for _ in range(1000)}
    assert len(jtis) == 100 and len(states) == 1000


async def test_c05_request_object_signed_by_another_key_is_refused(
    config: ClientConfig, metadata: ServerMetadata
) -> None:
    store = SoftKeyStore()
    store.generate("other", b"\x02")
    with pytest.raises(ConfigError):
        await sign_request_object(store.signer("other"), _build(config, metadata).claims)


async def test_c05_request_or_request_uri_claims_are_refused(
    signer: SoftSigner, config: ClientConfig, metadata: ServerMetadata
) -> None:
    claims = dict(_build(config, metadata).claims)
    claims["request_uri"] = "https://x"
    with pytest.raises(InvalidArgument):
        await sign_request_object(signer, claims)


def test_c05_no_pkce_when_disabled(signer: SoftSigner, metadata: ServerMetadata) -> None:
    config = ClientConfig(
        issuer=ISSUER, client_id=signer.kid, redirect_uri=REDIRECT_URI, use_pkce=False
    )
    req = _build(config, metadata, code_challenge=None)
    assert "code_challenge" not in req.claims and "code_challenge_method" not in req.claims


@pytest.mark.parametrize(
    "kw",
    [
        {"state": "short"},
        {"state": "has space and more than sixteen"},
        {"nonce": ""},
        {"jti": ""},
        {"code_challenge": "not-a-challenge"},
        {"code_challenge": None},  # PKCE is on in this config
    ],
)
def test_bad_request_parameters_are_invalid_arguments(
    config: ClientConfig, metadata: ServerMetadata, kw: dict[str, Any]
) -> None:
    with pytest.raises(InvalidArgument):
        _build(config, metadata, **kw)


def test_request_object_lifetime_is_bounded(signer: SoftSigner) -> None:
    with pytest.raises(ConfigError):
        ClientConfig(
            issuer=ISSUER,
            client_id=signer.kid,
            redirect_uri=REDIRECT_URI,
            request_object_lifetime=601,
        )


def test_c06_authorization_url_duplicates_are_byte_identical(
    config: ClientConfig, metadata: ServerMetadata
) -> None:
    req = _build(config, metadata)
    request_uri = "https://broker.example.org/request/" + new_state()
    url = authorization_url(
        metadata,
        config,
        request_uri=request_uri,
        state=req.state,
        nonce=req.nonce,
        code_challenge=req.code_challenge,
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == metadata.authorization_endpoint
    assert "scope=openid%20learcredential" in parts.query  # as DOME documents it
    query = parse_qsl(parts.query, strict_parsing=True)
    names = [k for k, _ in query]
    assert len(names) == len(set(names))
    params = dict(query)
    assert names == [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "request_uri",
    ]
    for name in (
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    ):
        assert params[name] == req.claims[name], name
    assert params["request_uri"] == request_uri
    # state is echoed by DOME without percent-encoding: it must need none
    assert f"state={req.state}&" in parts.query


def test_c06_par_url_has_only_client_id_and_request_uri(
    config: ClientConfig, metadata: ServerMetadata
) -> None:
    urn = "urn:ietf:params:oauth:request_uri:abc"
    url = par_authorization_url(metadata, config.client_id, urn)
    query = dict(parse_qsl(urlsplit(url).query, strict_parsing=True))
    assert query == {"client_id": config.client_id, "request_uri": urn}


def test_c06_request_uri_longer_than_512_is_refused(
    config: ClientConfig, metadata: ServerMetadata
) -> None:
    with pytest.raises(InvalidArgument):
        authorization_url(
            metadata,
            config,
            request_uri="https://b/" + "a" * 520,
            state=new_state(),
            nonce=new_nonce(),
            code_challenge=None,
        )


def test_authorization_endpoint_with_existing_query(
    config: ClientConfig, metadata: ServerMetadata
) -> None:
    md = ServerMetadata(
        issuer=metadata.issuer,
        authorization_endpoint=metadata.authorization_endpoint + "?tenant=a",
        token_endpoint=metadata.token_endpoint,
        jwks_uri=metadata.jwks_uri,
    )
    url = par_authorization_url(md, config.client_id, "urn:x")
    assert dict(parse_qsl(urlsplit(url).query))["tenant"] == "a"
