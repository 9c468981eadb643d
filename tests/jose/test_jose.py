"""broker.jose: the fast JWS assembly is byte-identical to the plain reference encoding."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from jwcrypto import jwk, jws

from broker import jose
from broker.keys.didkey import public_jwk
from broker.keys.soft import SoftKeyStore

CLAIMS: dict[str, Any] = {
    "iss": "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY",
    "aud": "https://verifier.example/é",  # non-ASCII: escaped as \\u00e9 like json.dumps does
    "jti": "2f4c0b7e",
    "exp": 1_800_000_300,
    "nested": {"list": [1, 2.5, True, None]},
}


def _reference_segment(obj: Any) -> str:
    text = json.dumps(obj, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("utf-8")).rstrip(b"=").decode("ascii")


def _reference_header(
    alg: str, kid: str, typ: str | None, extra: dict[str, Any] | None
) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": alg}
    if typ is not None:
        header["typ"] = typ
    header["kid"] = kid
    if extra:
        header.update(extra)
    return header


@pytest.mark.parametrize("size", range(0, 70))
def test_b64url_matches_the_standard_library(size: int) -> None:
    data = bytes((i * 37 + 251) % 256 for i in range(size))
    expected = base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
    assert jose.b64url(data) == expected
    assert jose.b64url_decode(expected) == data


@pytest.mark.parametrize(
    ("typ", "extra"),
    [
        ("JWT", None),
        (None, None),
        ("oauth-authz-req+jwt", {}),
        ("JWT", {"x5u": "https://a.example", "n": 1}),
        ("JWT", {"typ": "override", "alg": "ES256"}),  # overrides keep their position
        ("JWT", {"flag": True}),
        ("JWT", {"flag": 1}),  # equal to True as a dict key, different JSON
        ("JWT", {"flag": 1.0}),
        ("JWT", {"crit": ["b64"], "b64": False}),  # unhashable value: encoded afresh
        ("JWT", {"jwk": {"kty": "EC"}}),
    ],
)
def test_header_segment_is_byte_identical_to_a_fresh_encoding(
    typ: str | None, extra: dict[str, Any] | None
) -> None:
    expected = _reference_segment(_reference_header("ES256", "did:key:zK", typ, extra))
    for _ in range(2):  # the second call is served by the memo
        assert jose.header_segment("ES256", "did:key:zK", typ, extra).decode() == expected


def test_header_memo_does_not_confuse_equal_but_differently_typed_values() -> None:
    as_bool = jose.header_segment("ES256", "k", "JWT", {"v": True})
    as_int = jose.header_segment("ES256", "k", "JWT", {"v": 1})
    as_float = jose.header_segment("ES256", "k", "JWT", {"v": 1.0})
    decoded = {
        json.loads(jose.b64url_decode(s.decode()))["v"].__repr__()
        for s in (as_bool, as_int, as_float)
    }
    assert decoded == {"True", "1", "1.0"}


def test_header_segment_rejects_what_json_cannot_encode() -> None:
    with pytest.raises(TypeError):
        jose.header_segment("ES256", "k", "JWT", {"v": object()})


def test_signing_input_is_header_dot_claims() -> None:
    header = {"alg": "ES256", "kid": "k"}
    expected = f"{_reference_segment(header)}.{_reference_segment(CLAIMS)}".encode("ascii")
    assert jose.signing_input(header, CLAIMS) == expected


@pytest.mark.parametrize("typ", ["JWT", "oauth-authz-req+jwt", None])
def test_sign_compact_verifies_in_jwcrypto_and_matches_the_reference_layout(
    typ: str | None,
) -> None:
    store = SoftKeyStore()
    info = store.generate("k", b"\x01")
    signer = store.signer("k")
    token = jose.sign_compact(signer, CLAIMS, typ=typ)
    head, payload, sig = token.split(".")
    assert head == _reference_segment(_reference_header("ES256", info.kid, typ, None))
    assert payload == _reference_segment(CLAIMS)
    assert len(jose.b64url_decode(sig)) == 64  # raw r||s, never DER
    verifier = jws.JWS()
    verifier.deserialize(token)
    verifier.verify(jwk.JWK(**public_jwk(info.public_key, kid=info.kid)), alg="ES256")
    assert json.loads(verifier.payload) == CLAIMS
    assert jose.unverified_parts(token) == (
        _reference_header("ES256", info.kid, typ, None),
        CLAIMS,
    )


async def test_sign_compact_async_gives_a_verifiable_token() -> None:
    store = SoftKeyStore()
    info = store.generate("k", b"\x01")
    token = await jose.sign_compact_async(store.signer("k"), CLAIMS, typ="JWT")
    verifier = jws.JWS()
    verifier.deserialize(token)
    verifier.verify(jwk.JWK(**public_jwk(info.public_key, kid=info.kid)), alg="ES256")


def test_claims_json_cannot_encode_raise_type_error() -> None:
    store = SoftKeyStore()
    store.generate("k", b"\x01")
    with pytest.raises(TypeError):
        jose.sign_compact(store.signer("k"), {"bad": object()})
