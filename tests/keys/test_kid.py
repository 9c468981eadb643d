"""The JOSE kid of the client key in its three forms (TEST-CATALOGUE I02: kid in JWS headers
consistent): did:key spec vectors for the did and DID URL forms, jwcrypto's RFC 7638
``thumbprint()`` as the independent oracle for the EC thumbprint."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk

from broker.errors import ConfigError, DidError
from broker.keys.didkey import public_key_from_did
from broker.keys.kid import (
    KidFormat,
    KidSigner,
    did_url,
    jwk_thumbprint,
    kid_for,
    kid_names_did,
    signing_jwk,
    with_kid_format,
)
from broker.keys.soft import SoftKeyStore
from tests.keys.helpers import verify_es256_raw

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "data" / "didkey_vectors.json").read_text("utf-8")
)
P256 = VECTORS["p256"]


@pytest.mark.parametrize("vector", P256, ids=lambda v: v["did"][:20])
def test_i02_kid_did_is_the_bare_did(vector: dict[str, str]) -> None:
    assert kid_for(public_key_from_did(vector["did"]), KidFormat.DID) == vector["did"]


@pytest.mark.parametrize("vector", P256, ids=lambda v: v["did"][:20])
def test_i02_kid_did_url_fragment_is_the_multibase_key(vector: dict[str, str]) -> None:
    """did:key method spec: the one verification method is ``did:key:<mb>#<mb>``."""
    did = vector["did"]
    multibase = did.removeprefix("did:key:")
    expected = f"{did}#{multibase}"
    assert multibase.startswith("zDn")
    assert kid_for(public_key_from_did(did), KidFormat.DID_URL) == expected
    assert did_url(did) == expected


def test_did_url_refuses_a_did_url_or_another_method() -> None:
    did = P256[0]["did"]
    with pytest.raises(DidError):
        did_url(did_url(did))
    with pytest.raises(DidError):
        did_url("did:web:example.org")


@pytest.mark.parametrize("vector", P256, ids=lambda v: v["did"][:20])
def test_i02_kid_thumbprint_equals_jwcrypto_rfc7638(vector: dict[str, str]) -> None:
    oracle = jwk.JWK(kty="EC", crv="P-256", x=vector["x"], y=vector["y"]).thumbprint()
    public_key = public_key_from_did(vector["did"])
    assert kid_for(public_key, KidFormat.JWK_THUMBPRINT) == oracle
    assert jwk_thumbprint(public_key) == oracle


def test_thumbprint_of_fresh_keys_equals_jwcrypto_and_the_rfc7638_formula() -> None:
    """Random keys (coordinates with leading zero bytes come up): jwcrypto agrees, and so does
    the RFC 7638 3.2 canonical JSON written out by hand."""
    for _ in range(50):
        public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        oracle = jwk.JWK.from_pyca(public_key)
        n = public_key.public_numbers()
        x = base64.urlsafe_b64encode(n.x.to_bytes(32, "big")).rstrip(b"=").decode()
        y = base64.urlsafe_b64encode(n.y.to_bytes(32, "big")).rstrip(b"=").decode()
        canonical = f'{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}'.encode()
        by_hand = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=")
        assert jwk_thumbprint(public_key) == oracle.thumbprint() == by_hand.decode()


@pytest.mark.parametrize("kid_format", list(KidFormat))
def test_kid_names_did_in_every_form_and_only_for_that_key(kid_format: KidFormat) -> None:
    ours, other = P256[0]["did"], P256[1]["did"]
    kid = kid_for(public_key_from_did(ours), kid_format)
    assert kid_names_did(kid, ours)
    assert not kid_names_did(kid, other)
    assert not kid_names_did(kid, "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK")
    assert not kid_names_did(kid, "not a did")


@pytest.mark.parametrize("kid_format", list(KidFormat))
def test_signing_jwk_is_public_with_alg_use_and_the_kid(kid_format: KidFormat) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_key = private.public_key()
    published = signing_jwk(public_key, kid_format)
    assert set(published) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert published["kid"] == kid_for(public_key, kid_format)
    assert (published["kty"], published["crv"]) == ("EC", "P-256")
    assert (published["alg"], published["use"]) == ("ES256", "sig")
    loaded = jwk.JWK(**published)
    assert not loaded.has_private
    assert loaded.thumbprint() == jwk_thumbprint(public_key)


def test_with_kid_format_keeps_the_key_and_renames_it() -> None:
    store = SoftKeyStore()
    info = store.generate("client", b"\x01")
    signer = store.signer("client")
    assert with_kid_format(signer, info.public_key, KidFormat.DID) is signer
    for kid_format in (KidFormat.DID_URL, KidFormat.JWK_THUMBPRINT):
        named = with_kid_format(signer, info.public_key, kid_format)
        assert isinstance(named, KidSigner)
        assert named.kid == kid_for(info.public_key, kid_format) != signer.kid
        assert (named.alg, named.mechanism) == (signer.alg, signer.mechanism)
        assert verify_es256_raw(info.did, b"m", named.sign(b"m"))
        assert "kid=" in repr(named) and "_key" not in repr(named)


def test_with_kid_format_refuses_another_keys_public_key() -> None:
    store = SoftKeyStore()
    store.generate("client", b"\x01")
    other = store.generate("other", b"\x02")
    with pytest.raises(ConfigError):
        with_kid_format(store.signer("client"), other.public_key, KidFormat.JWK_THUMBPRINT)
