"""The ``kid`` of client assertions (RFC 7523; TEST-CATALOGUE C08) and request objects (RFC 9101;
C05) in each ``[oauth].kid_format`` (I02); the client_id must still be the signing key's did."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jwcrypto import jwk, jws

from broker.errors import ConfigError
from broker.jose import unverified_parts
from broker.keys.didkey import jwk_from_did
from broker.keys.kid import KidFormat, kid_for, with_kid_format
from broker.keys.soft import SoftKeyStore
from broker.oauth.client_auth import client_assertion
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import ServerMetadata
from broker.oauth.pkce import new_pkce
from broker.oauth.request_object import (
    build_authorization_request,
    new_nonce,
    new_state,
    sign_request_object,
)
from tests.oauth.fakeas import ISSUER, REDIRECT_URI

NOW = 1_800_000_000.0


def _verify(token: str, did: str) -> dict[str, Any]:
    obj = jws.JWS()
    obj.deserialize(token)
    obj.verify(jwk.JWK(**jwk_from_did(did)), alg="ES256")
    claims: dict[str, Any] = json.loads(obj.payload)
    return claims


@pytest.mark.parametrize("kid_format", list(KidFormat), ids=lambda f: f.value)
async def test_c08_i02_client_assertion_kid_in_each_format(
    kid_format: KidFormat, metadata: ServerMetadata
) -> None:
    store = SoftKeyStore()
    info = store.generate("client", b"\x01")
    signer = with_kid_format(store.signer("client"), info.public_key, kid_format)
    config = ClientConfig(issuer=ISSUER, client_id=info.did, redirect_uri=REDIRECT_URI)
    assertion = await client_assertion(signer, config, metadata, now=NOW)
    header, _ = unverified_parts(assertion)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": kid_for(info.public_key, kid_format)}
    claims = _verify(assertion, info.did)
    assert claims["iss"] == claims["sub"] == info.did  # client_id stays the bare did


@pytest.mark.parametrize("kid_format", list(KidFormat), ids=lambda f: f.value)
async def test_c05_i02_request_object_kid_in_each_format(
    kid_format: KidFormat, metadata: ServerMetadata
) -> None:
    store = SoftKeyStore()
    info = store.generate("client", b"\x01")
    signer = with_kid_format(store.signer("client"), info.public_key, kid_format)
    config = ClientConfig(issuer=ISSUER, client_id=info.did, redirect_uri=REDIRECT_URI)
    request = build_authorization_request(
        config,
        metadata,
        state=new_state(),
        nonce=new_nonce(),
        code_challenge=new_pkce().challenge,
        now=NOW,
        jti="jti-1",
    )
    token = await sign_request_object(signer, request.claims)
    header, _ = unverified_parts(token)
    assert header["kid"] == kid_for(info.public_key, kid_format)
    assert _verify(token, info.did)["client_id"] == info.did


@pytest.mark.parametrize("kid_format", list(KidFormat), ids=lambda f: f.value)
async def test_c05_c08_another_keys_signer_is_refused_in_every_format(
    kid_format: KidFormat, metadata: ServerMetadata
) -> None:
    store = SoftKeyStore()
    ours = store.generate("client", b"\x01")
    other = store.generate("other", b"\x02")
    signer = with_kid_format(store.signer("other"), other.public_key, kid_format)
    config = ClientConfig(issuer=ISSUER, client_id=ours.did, redirect_uri=REDIRECT_URI)
    with pytest.raises(ConfigError):
        await client_assertion(signer, config, metadata, now=NOW)
    request = build_authorization_request(
        config,
        metadata,
        state=new_state(),
        nonce=new_nonce(),
        code_challenge=new_pkce().challenge,
        now=NOW,
        jti="jti-2",
    )
    with pytest.raises(ConfigError):
        await sign_request_object(signer, request.claims)
