"""Parse a P-256 private key for import: PEM (PKCS#8 / SEC1), a JWK (JSON text or dict) or a
32-byte scalar in hex.

Errors are :class:`broker.errors.InvalidKey` and never echo any part of the input.
"""

from __future__ import annotations

import base64
import binascii
import json
import string
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import InvalidKey

_B64URL = frozenset(string.ascii_letters + string.digits + "-_")
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _b64url(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidKey(f"JWK member {name!r} must be a non-empty base64url string")
    if any(c not in _B64URL for c in value):
        raise InvalidKey(f"JWK member {name!r} is not valid base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise InvalidKey(f"JWK member {name!r} is not valid base64url") from None


def _require_p256(key: object) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidKey("the key is not an EC private key (only P-256 is supported)")
    if not isinstance(key.curve, ec.SECP256R1):
        raise InvalidKey(f"the key is on curve {key.curve.name}, only P-256 is supported")
    return key


def _from_scalar(raw: bytes) -> ec.EllipticCurvePrivateKey:
    if len(raw) != 32:
        raise InvalidKey(f"a P-256 private scalar is 32 bytes, got {len(raw)}")
    value = int.from_bytes(raw, "big")
    if not 0 < value < _P256_ORDER:
        raise InvalidKey("the private scalar is out of range for P-256")
    return ec.derive_private_key(value, ec.SECP256R1())


def load_private_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from a JWK (RFC 7518 section 6.2.2); x/y must match d."""
    if jwk.get("kty") != "EC":
        raise InvalidKey("JWK 'kty' must be 'EC'")
    if jwk.get("crv") != "P-256":
        raise InvalidKey("JWK 'crv' must be 'P-256'")
    if "d" not in jwk:
        raise InvalidKey("JWK has no private member 'd' (this is a public key)")
    key = _from_scalar(_b64url(jwk["d"], "d"))
    if "x" in jwk or "y" in jwk:
        nums = key.public_key().public_numbers()
        x = int.from_bytes(_b64url(jwk.get("x"), "x"), "big")
        y = int.from_bytes(_b64url(jwk.get("y"), "y"), "big")
        if (x, y) != (nums.x, nums.y):
            raise InvalidKey("JWK 'x'/'y' do not belong to its private member 'd'")
    return key


def load_private_key(text: str | Mapping[str, Any]) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM, JWK (JSON text or dict) or a 64-hex-digit scalar."""
    if isinstance(text, Mapping):
        return load_private_jwk(text)
    if not isinstance(text, str):
        raise InvalidKey("a private key must be given as text or a JWK dict")
    stripped = text.strip()
    if not stripped:
        raise InvalidKey("the private key text is empty")
    if stripped.startswith("-----BEGIN"):
        if "ENCRYPTED" in stripped.split("\n", 1)[0]:
            raise InvalidKey("encrypted PEM keys are not supported; decrypt it first")
        try:
            key = serialization.load_pem_private_key(stripped.encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeEncodeError):
            raise InvalidKey("the PEM text is not a readable unencrypted private key") from None
        except Exception:  # cryptography raises UnsupportedAlgorithm for unknown key types
            raise InvalidKey("the PEM text holds an unsupported kind of key") from None
        return _require_p256(key)
    if stripped.startswith("{"):
        try:
            jwk = json.loads(stripped)
        except json.JSONDecodeError:
            raise InvalidKey("the JWK text is not valid JSON") from None
        if not isinstance(jwk, dict):
            raise InvalidKey("a JWK must be a JSON object")
        return load_private_jwk(jwk)
    hexdigits = stripped.removeprefix("0x").removeprefix("0X")
    if all(c in string.hexdigits for c in hexdigits):
        if len(hexdigits) != 64:
            raise InvalidKey(f"a hex P-256 private scalar has 64 hex digits, got {len(hexdigits)}")
        return _from_scalar(bytes.fromhex(hexdigits))
    raise InvalidKey("unrecognised private key format: expected PEM, JWK or a 64-digit hex scalar")
