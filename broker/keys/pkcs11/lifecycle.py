"""Key lifecycle in a PKCS#11 token: generating, importing and destroying keys.

:class:`KeyLifecycle` is the lifecycle half of :class:`broker.keys.pkcs11.store.Pkcs11KeyStore`
(mixed into it): the P-256 signing pair (private key sensitive, non-extractable, sign-only) and
the AES-256 sealing key (encrypt/decrypt only) are made in the token from the object templates
here; ``delete`` destroys every object of a label. An import makes the public object, then the
private one (two ``C_CreateObject`` calls): it destroys the first when the second fails, and a
retry after a lost session removes the one its first attempt left. Every operation runs inside
the store's :meth:`broker.keys.pkcs11.session.Pkcs11Session.run` (lock, recovery).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from broker.errors import InvalidArgument, InvalidKey, KeyExists, KeyNotFound
from broker.keys.api import KeyInfo
from broker.keys.pkcs11.objects import P256_PARAMS, check_label

if TYPE_CHECKING:
    from broker.keys.pkcs11.session import Pkcs11Session

_PRIVATE_TEMPLATE: Mapping[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.SIGN_RECOVER: False,
    Attribute.DECRYPT: False,
    Attribute.DERIVE: False,
    Attribute.UNWRAP: False,
}
_PUBLIC_TEMPLATE: Mapping[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    Attribute.VERIFY: True,
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
    Attribute.DERIVE: False,
}
_SEALING_TEMPLATE: Mapping[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}


def _der_octet_string(data: bytes) -> bytes:
    if len(data) >= 128:
        raise ValueError("point too long")
    return b"\x04" + bytes([len(data)]) + data


def _check_key_id(key_id: bytes) -> None:
    if not isinstance(key_id, bytes) or not key_id or len(key_id) > 255:
        raise InvalidArgument("a key id (CKA_ID) must be 1 to 255 bytes")


class KeyLifecycle:
    """Generate, import and delete keys; mixed into the PKCS#11 key store."""

    if TYPE_CHECKING:
        _session: Pkcs11Session

        def _info(self, session: Any, label: str) -> KeyInfo: ...

    def _ensure_absent(self, session: Any, label: str, classes: tuple[ObjectClass, ...]) -> None:
        for object_class in classes:
            if self._session.find(session, object_class, label) is not None:
                raise KeyExists(f"a key labelled {label!r} already exists on the token")

    def generate(self, label: str, key_id: bytes) -> KeyInfo:
        """Generate a P-256 pair: private key TOKEN, PRIVATE, SENSITIVE, non-extractable, sign-only."""
        check_label(label)
        _check_key_id(key_id)

        def fn(session: Any) -> KeyInfo:
            self._ensure_absent(session, label, (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY))
            session.generate_keypair(
                KeyType.EC,
                store=True,
                id=key_id,
                label=label,
                capabilities=0,
                mechanism=Mechanism.EC_KEY_PAIR_GEN,
                public_template={Attribute.EC_PARAMS: P256_PARAMS, **_PUBLIC_TEMPLATE},
                private_template=dict(_PRIVATE_TEMPLATE),
            )
            return self._info(session, label)

        return self._session.run("generate", fn)

    def import_key(
        self, label: str, key_id: bytes, private_key: ec.EllipticCurvePrivateKey
    ) -> KeyInfo:
        """Import a P-256 key as a sensitive, non-extractable, sign-only token object."""
        check_label(label)
        _check_key_id(key_id)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise InvalidKey("only P-256 private keys can be imported")
        scalar = private_key.private_numbers().private_value.to_bytes(32, "big")
        point = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

        ec_point = _der_octet_string(point)
        attempts = 0

        def fn(session: Any) -> KeyInfo:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # a retry after recovery: the last attempt may have left its half
                self._drop_own_public(session, label, key_id, ec_point)
            self._ensure_absent(session, label, (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY))
            common = {
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.EC_PARAMS: P256_PARAMS,
                Attribute.ID: key_id,
                Attribute.LABEL: label,
            }
            pub = session.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.EC_POINT: ec_point,
                    **common,
                    **_PUBLIC_TEMPLATE,
                }
            )
            try:
                session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                        Attribute.VALUE: scalar,
                        **common,
                        **_PRIVATE_TEMPLATE,
                    }
                )
            except BaseException:
                # Leave nothing half-made. If this fails too (the session is gone), a retry
                # removes the public object first; else the orphan check names it.
                with contextlib.suppress(p11e.PKCS11Error):
                    pub.destroy()
                raise
            return self._info(session, label)

        return self._session.run("import", fn)

    def _drop_own_public(self, session: Any, label: str, key_id: bytes, ec_point: bytes) -> None:
        """Destroy a lone public object that is exactly the one this import makes (same label,
        id and point: public data only, nothing is lost)."""
        pub = self._session.find(session, ObjectClass.PUBLIC_KEY, label)
        if (
            pub is not None
            and self._session.find(session, ObjectClass.PRIVATE_KEY, label) is None
            and bytes(pub[Attribute.ID]) == key_id
            and bytes(pub[Attribute.EC_POINT]) == ec_point
        ):
            pub.destroy()

    def delete(self, label: str) -> None:
        """Destroy every object (private, public, secret) labelled ``label``."""
        check_label(label)

        def fn(session: Any) -> None:
            found = [
                obj
                for object_class in (
                    ObjectClass.PRIVATE_KEY,
                    ObjectClass.PUBLIC_KEY,
                    ObjectClass.SECRET_KEY,
                )
                for obj in [self._session.find(session, object_class, label)]
                if obj is not None
            ]
            if not found:
                raise KeyNotFound(
                    f"no key labelled {label!r} on token {self._session.token_label!r}"
                )
            for obj in found:
                obj.destroy()
            self._session.forget(label)

        self._session.run("delete", fn)

    def generate_sealing_key(self, label: str, key_id: bytes) -> None:
        """An AES-256 key on the token: sensitive, non-extractable, ENCRYPT/DECRYPT only."""
        check_label(label)
        _check_key_id(key_id)

        def fn(session: Any) -> None:
            self._ensure_absent(session, label, (ObjectClass.SECRET_KEY,))
            session.generate_key(
                KeyType.AES,
                256,
                store=True,
                id=key_id,
                label=label,
                capabilities=0,
                template=dict(_SEALING_TEMPLATE),
            )

        self._session.run("generate sealing key", fn)
