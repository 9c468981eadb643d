"""The production key backend: RFC 7512 ``pkcs11:`` URIs opened as a PKCS#11 token."""

from __future__ import annotations

import dataclasses
import os

from cryptography.hazmat.primitives.asymmetric import ec

from broker.ceremony.backend import CeremonyStore, KeyTarget, refuse_inline_pin
from broker.errors import ConfigError, InvalidKeyUri
from broker.keys.importing import load_private_key
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.uri import KeyRef, parse_key_uri


class Pkcs11Backend:
    """RFC 7512 ``pkcs11:`` URIs and :class:`broker.keys.pkcs11.Pkcs11KeyStore`."""

    def parse(self, text: str) -> KeyTarget:
        refuse_inline_pin(text)
        ref = parse_key_uri(text)
        return KeyTarget(uri=str(ref), label=ref.object, key_id=ref.id, ref=ref)

    def open(self, target: KeyTarget, *, pin_file: str | None) -> CeremonyStore:
        ref = target.ref
        if not isinstance(ref, KeyRef):
            raise InvalidKeyUri("the key target was not parsed by the PKCS#11 backend")
        if pin_file is not None:
            ref = dataclasses.replace(ref, pin_source=os.path.abspath(pin_file))
        if ref.pin_source is None:
            raise ConfigError(
                "no PIN source: add ?pin-source=file:/path to the key URI or pass --pin-file"
            )
        store: CeremonyStore = Pkcs11KeyStore.from_ref(ref)
        return store

    def load_private_key(self, text: str) -> ec.EllipticCurvePrivateKey:
        return load_private_key(text)

    def sealing_key_uri(self, target: KeyTarget, key_id: bytes) -> str:
        if not isinstance(target.ref, KeyRef):
            raise InvalidKeyUri("the key target was not parsed by the PKCS#11 backend")
        uri = str(dataclasses.replace(target.ref, id=key_id))
        return uri.replace(";type=private", ";type=secret-key", 1)
