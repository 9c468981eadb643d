"""The production key backend: RFC 7512 ``pkcs11:`` URIs opened as a PKCS#11 token."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, ObjectClass

from broker.ceremony.backend import CeremonyStore, KeyTarget, refuse_inline_pin
from broker.errors import ConfigError, InvalidKeyUri
from broker.keys.importing import load_private_key
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.pkcs11 import lib as pkcs11_lib
from broker.keys.uri import KeyRef, parse_key_uri


class CeremonyKeyStore(Pkcs11KeyStore):
    """:class:`Pkcs11KeyStore` plus what only the ceremonies need: the AES keys in the token."""

    def list_sealing_keys(self) -> list[tuple[str, bytes]]:
        def fn(session: Any) -> list[tuple[str, bytes]]:
            if not self._logged_in(session):
                raise p11e.UserNotLoggedIn()  # an empty search would hide keys: log in again
            found = session.get_objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES}
            )
            return sorted((str(obj[Attribute.LABEL]), bytes(obj[Attribute.ID])) for obj in found)

        return self._run("list sealing keys", fn)


class Pkcs11Backend:
    """RFC 7512 ``pkcs11:`` URIs and :class:`CeremonyKeyStore`."""

    def parse(self, text: str) -> KeyTarget:
        refuse_inline_pin(text)
        ref = parse_key_uri(text)
        return KeyTarget(uri=str(ref), label=ref.object, key_id=ref.id, ref=ref, token=ref.token)

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
        module = ref.module_path or pkcs11_lib.default_module_path()
        return CeremonyKeyStore(module, ref.token, ref.read_pin())

    def load_private_key(self, text: str) -> ec.EllipticCurvePrivateKey:
        return load_private_key(text)

    def key_uri(self, target: KeyTarget, key_id: bytes) -> str:
        if not isinstance(target.ref, KeyRef):
            raise InvalidKeyUri("the key target was not parsed by the PKCS#11 backend")
        return str(dataclasses.replace(target.ref, id=key_id))

    def sealing_key_uri(self, target: KeyTarget, key_id: bytes) -> str:
        return self.key_uri(target, key_id).replace(";type=private", ";type=secret-key", 1)
