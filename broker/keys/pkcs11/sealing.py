"""AES-256-GCM in the token: :class:`Pkcs11Sealer` (data at rest, e.g. refresh tokens).

Output = 12-byte random IV || ciphertext || 16-byte tag; ``aad`` binds it to its context. The
key stays in the token (sensitive, non-extractable, ENCRYPT/DECRYPT only; made by
:meth:`broker.keys.pkcs11.store.Pkcs11KeyStore.generate_sealing_key`).
"""

from __future__ import annotations

import os
from typing import Any

import pkcs11.exceptions as p11e
from pkcs11 import Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from broker.errors import KeyStoreError
from broker.keys.pkcs11.session import Pkcs11Session

GCM_IV_BYTES = 12
GCM_TAG_BITS = 128
# The errors a token gives when an AES-GCM tag does not verify (SoftHSM 2.6: CKR_GENERAL_ERROR).
_GCM_AUTH_FAILURES: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
    p11e.GeneralError,
)


class Pkcs11Sealer:
    """A :class:`broker.keys.api.Sealer` whose AES-256 key ``label`` stays in the token."""

    def __init__(self, session: Pkcs11Session, label: str) -> None:
        self._session = session
        self._label = label

    def __repr__(self) -> str:
        return f"Pkcs11Sealer(key_label={self._label!r})"

    @property
    def key_label(self) -> str:
        return self._label

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        iv = os.urandom(GCM_IV_BYTES)
        return iv + self._gcm(plaintext, iv, aad, encrypt=True)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < GCM_IV_BYTES + GCM_TAG_BITS // 8:
            raise KeyStoreError("sealed value is too short")
        iv, body = sealed[:GCM_IV_BYTES], sealed[GCM_IV_BYTES:]
        return self._gcm(body, iv, aad, encrypt=False)

    def _gcm(self, data: bytes, iv: bytes, aad: bytes, *, encrypt: bool) -> bytes:
        """AES-GCM encrypt or decrypt in the token with the secret key of this sealer."""
        params = GCMParams(iv, aad if aad else None, GCM_TAG_BITS)

        def fn(session: Any) -> bytes:
            key = self._session.handle(session, ObjectClass.SECRET_KEY, self._label)
            if encrypt:
                return bytes(key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=params))
            try:
                return bytes(key.decrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=params))
            except _GCM_AUTH_FAILURES:
                raise KeyStoreError(
                    "sealed value does not authenticate (wrong key, wrong context or tampered)"
                ) from None

        return self._session.run("seal" if encrypt else "open", fn)
