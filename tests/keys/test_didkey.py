"""did:key (P-256) vectors from DOME and the did:key method spec; TEST-CATALOGUE I02 (data part)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import DidError
from broker.keys.didkey import (
    decode_did_key,
    did_from_public_key,
    jwk_from_did,
    public_key_from_did,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "data" / "didkey_vectors.json").read_text("utf-8")
)


def _int(b64u: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(b64u + "=" * (-len(b64u) % 4)), "big")


@pytest.mark.parametrize("vector", VECTORS["p256"], ids=lambda v: v["did"][:20])
def test_i02_p256_vector_encodes_and_decodes(vector: dict[str, str]) -> None:
    public = ec.EllipticCurvePublicNumbers(
        _int(vector["x"]), _int(vector["y"]), ec.SECP256R1()
    ).public_key()
    assert did_from_public_key(public) == vector["did"]
    assert vector["did"].startswith("did:key:zDn")
    decoded = public_key_from_did(vector["did"])
    assert decoded.public_numbers() == public.public_numbers()
    jwk = jwk_from_did(vector["did"])
    assert jwk == {
        "kty": "EC",
        "crv": "P-256",
        "x": vector["x"],
        "y": vector["y"],
        "kid": vector["did"],
    }


@pytest.mark.parametrize("vector", VECTORS["other"], ids=lambda v: v["key_type"])
def test_other_key_types_decode_but_are_not_p256(vector: dict[str, str]) -> None:
    assert decode_did_key(vector["did"]).key_type == vector["key_type"]
    with pytest.raises(DidError, match="expected a P-256 did:key"):
        public_key_from_did(vector["did"])


@pytest.mark.parametrize("vector", VECTORS["errors"], ids=lambda v: v["case"])
def test_malformed_did_key_is_rejected_clearly(vector: dict[str, Any]) -> None:
    with pytest.raises(DidError) as info:
        if vector.get("p256_only"):
            public_key_from_did(vector["did"])
        else:
            decode_did_key(vector["did"])
    assert vector["error"] in str(info.value)


def test_non_p256_public_key_cannot_be_encoded() -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(DidError, match="P-256"):
        did_from_public_key(other)


def test_random_keys_round_trip() -> None:
    for _ in range(50):
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        did = did_from_public_key(public)
        assert public_key_from_did(did).public_numbers() == public.public_numbers()
