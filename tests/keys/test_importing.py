"""Private-key parsers for import: PEM, JWK, hex scalar; clear errors that never echo key material."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from broker.errors import InvalidKey
from broker.keys.didkey import public_jwk
from broker.keys.importing import load_private_key

KEY = ec.derive_private_key(0x1234567890ABCDEF << 100, ec.SECP256R1())
D_HEX = KEY.private_numbers().private_value.to_bytes(32, "big").hex()


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk() -> dict[str, str]:
    jwk = public_jwk(KEY.public_key())
    jwk["d"] = _b64u(bytes.fromhex(D_HEX))
    return jwk


def _same(key: ec.EllipticCurvePrivateKey) -> bool:
    return key.private_numbers() == KEY.private_numbers()


def test_pem_pkcs8_and_sec1() -> None:
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        pem = KEY.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        assert _same(load_private_key(pem.decode()))
        assert _same(load_private_key("\n  " + pem.decode() + "\n"))


def test_jwk_dict_and_text_and_hex() -> None:
    assert _same(load_private_key(_jwk()))
    assert _same(load_private_key(json.dumps(_jwk())))
    assert _same(load_private_key(D_HEX))
    assert _same(load_private_key("0x" + D_HEX.upper() + "\n"))
    jwk = _jwk()
    del jwk["x"], jwk["y"]
    assert _same(load_private_key(jwk))


def _secret_fragments() -> list[str]:
    return [D_HEX[:16], _jwk()["d"][:12]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA" + D_HEX + "\n-----END PRIVATE KEY-----\n", "PEM"),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----",
            "encrypted",
        ),
        ("{" + D_HEX, "not valid JSON"),
        ("[1, 2]", "unrecognised"),
        (D_HEX[:-2], "64 hex digits, got 62"),
        ("00" * 32, "out of range"),
        ("ff" * 32, "out of range"),
        ("not a key " + D_HEX, "unrecognised"),
    ],
)
def test_bad_text_gives_clear_error_without_key_material(text: str, message: str) -> None:
    with pytest.raises(InvalidKey, match=message) as info:
        load_private_key(text)
    for fragment in _secret_fragments():
        assert fragment.lower() not in str(info.value).lower()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kty": "RSA"}, "'kty' must be 'EC'"),
        ({"crv": "P-384"}, "'crv' must be 'P-256'"),
        ({"d": None}, "'d' must be a non-empty base64url"),
        ({"d": "@@@"}, "not valid base64url"),
        ({"d": _b64u(b"\x01" * 31)}, "32 bytes, got 31"),
        ({"x": _b64u(b"\x01" * 32)}, "do not belong"),
    ],
)
def test_bad_jwk(change: dict[str, str | None], message: str) -> None:
    jwk: dict[str, object] = {**_jwk(), **change}
    with pytest.raises(InvalidKey, match=message) as info:
        load_private_key(jwk)
    assert _jwk()["d"][:12] not in str(info.value)


def test_public_jwk_is_not_a_private_key() -> None:
    with pytest.raises(InvalidKey, match="no private member 'd'"):
        load_private_key(public_jwk(KEY.public_key()))


def test_other_curves_and_types_are_rejected() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidKey, match="secp384r1"):
        load_private_key(p384.decode())
    edkey = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(InvalidKey, match="not an EC private key"):
        load_private_key(edkey.decode())
    with pytest.raises(InvalidKey, match="text or a JWK dict"):
        load_private_key(b"bytes")  # type: ignore[arg-type]
