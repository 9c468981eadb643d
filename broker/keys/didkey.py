"""did:key for P-256 (and decoding of Ed25519 / secp256k1 peers).

``did:key:z`` + base58btc(varint(multicodec) + public key bytes). For P-256 the multicodec is
``p256-pub`` (0x1200, varint ``0x80 0x24``) followed by the 33-byte *compressed* SEC1 point, so
every P-256 did:key starts ``did:key:zDn``. The DOME Verifier decodes compressed points only.

Spec: https://w3c-ccg.github.io/did-method-key/ ; multicodec table ``p256-pub``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import base58
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import DidError

DID_KEY_PREFIX = "did:key:"
MULTIBASE_BASE58BTC = "z"
P256_PUB = b"\x80\x24"  # varint(0x1200)
SECP256K1_PUB = b"\xe7\x01"  # varint(0xe7)
ED25519_PUB = b"\xed\x01"  # varint(0xed)


@dataclass(frozen=True)
class DecodedDidKey:
    """A decoded did:key: its key type and the raw public key bytes after the multicodec."""

    did: str
    key_type: str  # "P-256" | "secp256k1" | "Ed25519"
    public_bytes: bytes


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def did_from_public_key(public_key: ec.EllipticCurvePublicKey) -> str:
    """Encode a P-256 public key as ``did:key:zDn...`` (compressed point)."""
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise DidError(f"did:key here is for P-256 keys, not {public_key.curve.name}")
    point = public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    return DID_KEY_PREFIX + MULTIBASE_BASE58BTC + base58.b58encode(P256_PUB + point).decode("ascii")


def decode_did_key(did: str) -> DecodedDidKey:
    """Decode any supported did:key (P-256, secp256k1, Ed25519) with clear errors."""
    if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX):
        raise DidError("not a did:key: it must start with 'did:key:'")
    ident = did[len(DID_KEY_PREFIX) :]
    if "#" in ident or "?" in ident or "/" in ident:
        raise DidError("a did:key here must be bare (no DID URL fragment, query or path)")
    if not ident.startswith(MULTIBASE_BASE58BTC):
        raise DidError("did:key must use multibase base58btc (prefix 'z')")
    try:
        raw = base58.b58decode(ident[1:])
    except ValueError as exc:
        raise DidError("did:key is not valid base58btc") from exc
    if raw.startswith(P256_PUB):
        key = raw[len(P256_PUB) :]
        if len(key) == 65 and key[0] == 4:
            raise DidError("did:key holds an uncompressed P-256 point; use the compressed form")
        if len(key) != 33:
            raise DidError(f"P-256 did:key must hold a 33-byte compressed point, got {len(key)}")
        if key[0] not in (2, 3):
            raise DidError("P-256 did:key point has an invalid compression prefix")
        return DecodedDidKey(did, "P-256", key)
    if raw.startswith(SECP256K1_PUB):
        key = raw[len(SECP256K1_PUB) :]
        if len(key) != 33:
            raise DidError(f"secp256k1 did:key must hold 33 bytes, got {len(key)}")
        return DecodedDidKey(did, "secp256k1", key)
    if raw.startswith(ED25519_PUB):
        key = raw[len(ED25519_PUB) :]
        if len(key) != 32:
            raise DidError(f"Ed25519 did:key must hold 32 bytes, got {len(key)}")
        return DecodedDidKey(did, "Ed25519", key)
    raise DidError(f"unsupported did:key multicodec prefix 0x{raw[:2].hex()}")


def public_key_from_did(did: str) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a ``did:key:zDn...``."""
    decoded = decode_did_key(did)
    if decoded.key_type != "P-256":
        raise DidError(f"expected a P-256 did:key, got {decoded.key_type}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), decoded.public_bytes)
    except ValueError as exc:
        raise DidError("P-256 did:key point is not on the curve") from exc


def public_jwk(public_key: ec.EllipticCurvePublicKey, *, kid: str | None = None) -> dict[str, str]:
    """The public JWK (RFC 7517) of a P-256 key; ``kid`` defaults to nothing."""
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise DidError(f"expected a P-256 key, got {public_key.curve.name}")
    nums = public_key.public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64u(nums.x.to_bytes(32, "big")),
        "y": _b64u(nums.y.to_bytes(32, "big")),
    }
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def jwk_from_did(did: str) -> dict[str, str]:
    """The public JWK of a P-256 did:key, with ``kid`` = the bare did (as DOME wants)."""
    return public_jwk(public_key_from_did(did), kid=did)
