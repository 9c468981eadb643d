"""In-memory key store and sealer with the same interfaces as the PKCS#11 ones.

For fast unit tests and the contract suite only: the private keys live in process memory.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.errors import InvalidKey, KeyExists, KeyNotFound, KeyStoreError
from broker.keys.api import ES256, KeyInfo

_SOFT_ATTRIBUTES = {
    "token": False,
    "private": True,
    "sensitive": False,
    "extractable": True,
    "never_extractable": False,
    "always_sensitive": False,
    "local": True,
    "sign": True,
    "decrypt": False,
    "derive": False,
    "unwrap": False,
}


def es256_raw_signature(der_signature: bytes) -> bytes:
    """DER ECDSA signature -> JOSE 64-byte r||s (zero-padded)."""
    r, s = decode_dss_signature(der_signature)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True)
class SoftSigner:
    label: str
    _key: ec.EllipticCurvePrivateKey = field(repr=False)
    _kid: str

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def alg(self) -> str:
        return ES256

    @property
    def mechanism(self) -> str:
        return "soft-ecdsa-sha256"

    def sign(self, message: bytes) -> bytes:
        return es256_raw_signature(self._key.sign(message, ec.ECDSA(hashes.SHA256())))


class SoftKeyStore:
    """KeyStore + KeyDeleter in memory."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[bytes, ec.EllipticCurvePrivateKey]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SoftKeyStore(keys={sorted(self._keys)})"

    def _info(self, label: str, key_id: bytes, key: ec.EllipticCurvePrivateKey) -> KeyInfo:
        return KeyInfo(
            label=label,
            key_id=key_id,
            public_key=key.public_key(),
            attributes=dict(_SOFT_ATTRIBUTES),
            uri=f"soft:object={label}",
        )

    def generate(self, label: str, key_id: bytes) -> KeyInfo:
        return self.import_key(label, key_id, ec.generate_private_key(ec.SECP256R1()))

    def import_key(
        self, label: str, key_id: bytes, private_key: ec.EllipticCurvePrivateKey
    ) -> KeyInfo:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise InvalidKey("only P-256 private keys can be imported")
        with self._lock:
            if label in self._keys:
                raise KeyExists(f"a key labelled {label!r} already exists")
            self._keys[label] = (key_id, private_key)
        return self._info(label, key_id, private_key)

    def _find(self, label: str) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        with self._lock:
            try:
                return self._keys[label]
            except KeyError:
                raise KeyNotFound(f"no key labelled {label!r}") from None

    def get(self, label: str) -> KeyInfo:
        key_id, key = self._find(label)
        return self._info(label, key_id, key)

    def list(self) -> list[KeyInfo]:
        with self._lock:
            items = sorted(self._keys.items())
        return [self._info(label, kid, key) for label, (kid, key) in items]

    def signer(self, label: str) -> SoftSigner:
        _, key = self._find(label)
        info = self._info(label, b"", key)
        return SoftSigner(label, key, info.kid)

    def delete(self, label: str) -> None:
        with self._lock:
            if self._keys.pop(label, None) is None:
                raise KeyNotFound(f"no key labelled {label!r}")

    def close(self) -> None:
        pass


class SoftSealer:
    """AES-256-GCM with a key in memory; output = 12-byte nonce || ciphertext || tag."""

    def __init__(self, key: bytes | None = None, key_label: str = "soft-sealer") -> None:
        self._aead = AESGCM(key if key is not None else AESGCM.generate_key(bit_length=256))
        self._label = key_label

    def __repr__(self) -> str:
        return f"SoftSealer(key_label={self._label!r})"

    @property
    def key_label(self) -> str:
        return self._label

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < 12 + 16:
            raise KeyStoreError("sealed value is too short")
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], aad)
        except InvalidTag:
            raise KeyStoreError(
                "sealed value does not authenticate (wrong key, wrong context or tampered)"
            ) from None
