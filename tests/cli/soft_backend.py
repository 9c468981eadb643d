"""A ceremony backend over the in-memory SoftKeyStore, for fast in-process CLI tests.

It parses real RFC 7512 URIs (broker.keys.uri), checks the token label and the PIN file like a
token would, and keeps its keys across CLI invocations of one test.
"""

from __future__ import annotations

import dataclasses
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.ceremony.backend import CeremonyStore, KeyTarget, refuse_inline_pin
from broker.errors import (
    ConfigError,
    InvalidKey,
    KeyExists,
    KeyNotFound,
    PinIncorrect,
    TokenNotPresent,
)
from broker.keys.api import HalfKey, KeyInfo
from broker.keys.soft import SoftKeyStore
from broker.keys.uri import KeyRef, parse_key_uri


class SoftCeremonyStore(SoftKeyStore):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.sealing: dict[str, bytes] = {}
        self.closed = 0

    def _info(self, label: str, key_id: bytes, key: ec.EllipticCurvePrivateKey) -> KeyInfo:
        info = super()._info(label, key_id, key)
        uri = str(KeyRef(token=self.token, object=label, id=key_id))
        return dataclasses.replace(info, uri=uri)

    def generate_sealing_key(self, label: str, key_id: bytes) -> None:
        if label in self.sealing:
            raise KeyExists(f"a sealing key labelled {label!r} already exists")
        self.sealing[label] = key_id

    def list_sealing_keys(self) -> list[tuple[str, bytes]]:
        return sorted(self.sealing.items())

    def list_half_keys(self) -> list[HalfKey]:
        return []  # the soft store makes and removes a pair in one step

    def delete(self, label: str) -> None:
        """Like a token: every object carrying the label goes."""
        had_sealing = self.sealing.pop(label, None) is not None
        try:
            super().delete(label)
        except KeyNotFound:
            if not had_sealing:
                raise

    def close(self) -> None:
        self.closed += 1


class SoftBackend:
    def __init__(self, token: str, pin: str) -> None:
        self.store = SoftCeremonyStore(token)
        self.pin = pin
        self.opened = 0

    def parse(self, text: str) -> KeyTarget:
        refuse_inline_pin(text)
        ref = parse_key_uri(text)
        return KeyTarget(uri=str(ref), label=ref.object, key_id=ref.id, ref=ref, token=ref.token)

    def open(self, target: KeyTarget, *, pin_file: str | None) -> CeremonyStore:
        ref = target.ref
        assert isinstance(ref, KeyRef)
        if pin_file is not None:
            ref = dataclasses.replace(ref, pin_source=os.path.abspath(pin_file))
        if ref.pin_source is None:
            raise ConfigError("no PIN source")
        if ref.token != self.store.token:
            raise TokenNotPresent(f"no token labelled {ref.token!r}")
        if ref.read_pin() != self.pin:
            raise PinIncorrect("the token refused the PIN")
        self.opened += 1
        return self.store

    def load_private_key(self, text: str) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidKey("not an EC key")
        return key

    def key_uri(self, target: KeyTarget, key_id: bytes) -> str:
        assert isinstance(target.ref, KeyRef)
        return str(dataclasses.replace(target.ref, id=key_id))

    def sealing_key_uri(self, target: KeyTarget, key_id: bytes) -> str:
        return self.key_uri(target, key_id).replace(";type=private", ";type=secret-key", 1)
