"""Independent verification helpers for the key tests (cryptography and jwcrypto, never the broker)."""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwk, jws

from broker.keys.didkey import jwk_from_did, public_key_from_did


def verify_es256_raw(did: str, message: bytes, signature: bytes) -> bool:
    """Verify a raw 64-byte r||s ES256 signature with the did-derived public key (cryptography)."""
    if len(signature) != 64:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    try:
        public_key_from_did(did).verify(
            encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        return False
    return True


def verify_jws_with_jwcrypto(compact: str, did: str) -> dict[str, Any]:
    """Verify a compact JWS with jwcrypto and the did:key JWK; return the claims."""
    token = jws.JWS()
    token.deserialize(compact)
    token.verify(jwk.JWK(**jwk_from_did(did)), alg="ES256")
    claims = json.loads(token.payload)
    assert isinstance(claims, dict)
    return claims
