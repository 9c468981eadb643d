"""Key custody interfaces: small, named by role (model: smallstep kms/apiv1).

Implementations: :class:`broker.keys.pkcs11.store.Pkcs11KeyStore` (a real PKCS#11 token) and
:class:`broker.keys.soft.SoftKeyStore` (in memory, for unit tests). One contract suite
(``tests/keys/test_keystore_contract.py``) runs against both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.keys.didkey import did_from_public_key, public_jwk

ES256 = "ES256"

T = TypeVar("T")


@dataclass(frozen=True)
class KeyInfo:
    """What may be known about a key without touching its private half."""

    label: str  # CKA_LABEL (the `object=` of the key URI)
    key_id: bytes  # CKA_ID (the `id=` of the key URI)
    public_key: ec.EllipticCurvePublicKey = field(repr=False, compare=False)
    # Attributes that prove custody (CKA_SENSITIVE, CKA_EXTRACTABLE, ...), lower-case names
    # without the CKA_ prefix: sensitive, extractable, never_extractable, always_sensitive,
    # local, token, private, sign, decrypt, derive, unwrap.
    attributes: Mapping[str, bool] = field(default_factory=dict, compare=False)
    uri: str = ""  # RFC 7512 URI of the private key, never with a PIN

    @property
    def did(self) -> str:
        return did_from_public_key(self.public_key)

    @property
    def kid(self) -> str:
        """The JOSE ``kid``: the bare did (DOME rejects DID-URL kids)."""
        return self.did

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex."""
        der = self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()

    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.public_key, kid=self.kid)


@dataclass(frozen=True)
class HalfKey:
    """A signing key of which the token holds one object only: ``present`` is ``"public"`` or
    ``"private"``. Left by a key creation cut off between its two objects (an import makes them
    with two ``C_CreateObject`` calls) or by a deletion outside the broker; unusable either way."""

    label: str  # CKA_LABEL
    key_id: bytes  # CKA_ID of the object that is there
    present: str  # "public" or "private"

    @property
    def missing(self) -> str:
        return "private" if self.present == "public" else "public"


@runtime_checkable
class Signer(Protocol):
    """Signs with one key. ``sign`` returns the JOSE signature (ES256: 64-byte r||s).

    Thread-safe: implementations serialise or otherwise protect their device.
    """

    @property
    def kid(self) -> str: ...

    @property
    def alg(self) -> str: ...

    @property
    def mechanism(self) -> str:
        """What the device used, for telemetry (e.g. ``CKM_ECDSA``)."""
        ...

    def sign(self, message: bytes) -> bytes: ...


class Offload(Protocol):
    """Where a signer's blocking work runs for async callers: one hop into a worker thread,
    bounded in time by the implementation (:class:`broker.keys.health.HsmHealth`)."""

    def run_async(self, operation: str, fn: Callable[[], T]) -> Awaitable[T]:
        """``fn()`` in a worker thread, awaited without blocking the event loop."""
        ...


def offload_of(signer: object) -> Offload | None:
    """The signer's :class:`Offload` (an optional ability: a ``offload`` property), if any.

    A signer that wraps another (e.g. one recording metrics) passes its inner signer's on.
    """
    offload: Offload | None = getattr(signer, "offload", None)
    return offload


class KeyStore(Protocol):
    """Creates, finds and signs with P-256 keys held by a token."""

    def generate(self, label: str, key_id: bytes) -> KeyInfo:
        """Generate a P-256 pair on the token: private key sensitive, non-extractable, sign-only."""
        ...

    def import_key(
        self, label: str, key_id: bytes, private_key: ec.EllipticCurvePrivateKey
    ) -> KeyInfo:
        """Import an existing P-256 private key as a sensitive, non-extractable token object."""
        ...

    def get(self, label: str) -> KeyInfo:
        """Raise :class:`broker.errors.KeyNotFound` when absent."""
        ...

    def list(self) -> list[KeyInfo]: ...

    def signer(self, label: str) -> Signer: ...

    def close(self) -> None: ...


class KeyDeleter(Protocol):
    """Optional ability: destroy a key (both halves). Ceremony CLI only."""

    def delete(self, label: str) -> None: ...


class Sealer(Protocol):
    """Authenticated encryption of data at rest under a key that stays in the token.

    AES-256-GCM; ``aad`` binds the ciphertext to its context (the grant id). ``open`` raises
    :class:`broker.errors.KeyStoreError` on a wrong key, a wrong ``aad`` or tampering.
    """

    @property
    def key_label(self) -> str: ...

    def seal(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def open(self, sealed: bytes, aad: bytes) -> bytes: ...
