"""Finding the key objects of a logged-in PKCS#11 session by label, and caching their handles.

:class:`ObjectHandles` is the object half of :class:`broker.keys.pkcs11.session.Pkcs11Session`
(mixed into it): an object is found by (class, label) once per session and its handle cached;
the session clears the cache whenever it drops or rebuilds the session, so every handle found
since a recovery is found again on next use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pkcs11.exceptions as p11e
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from broker.errors import InvalidArgument, InvalidKey, KeyNotFound

P256_PARAMS: bytes = encode_named_curve_parameters("secp256r1")
_MAX_LABEL = 255


def check_label(label: str) -> None:
    """A label (``CKA_LABEL``) is 1 to 255 bytes of UTF-8."""
    if not isinstance(label, str) or not label or len(label.encode("utf-8")) > _MAX_LABEL:
        raise InvalidArgument("a key label must be a non-empty string of at most 255 bytes")


class ObjectHandles:
    """Object look-ups by label inside :meth:`Pkcs11Session.run`; mixed into the session."""

    if TYPE_CHECKING:
        _token_label: str
        _handles: dict[tuple[ObjectClass, str], Any]

        def logged_in(self, session: Any) -> bool: ...

    @property
    def handles(self) -> dict[tuple[ObjectClass, str], Any]:
        """Object handles found in the current session, by (class, label)."""
        return self._handles

    def find(self, session: Any, object_class: ObjectClass, label: str) -> Any | None:
        """The one object of ``object_class`` labelled ``label``, or None (uncached)."""
        if not self.logged_in(session):
            # An empty search would wrongly say "no such key": recover the login first (D04).
            raise p11e.UserNotLoggedIn()
        found = list(session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label}))
        if len(found) > 1:
            raise InvalidKey(f"{len(found)} objects of one class carry the label {label!r}")
        return found[0] if found else None

    def handle(self, session: Any, object_class: ObjectClass, label: str) -> Any:
        """The object's handle, found once per session and then cached."""
        key = (object_class, label)
        obj = self._handles.get(key)
        if obj is None:
            obj = self.find(session, object_class, label)
            if obj is None:
                raise KeyNotFound(f"no key labelled {label!r} on token {self._token_label!r}")
            self._handles[key] = obj
        return obj

    def private_ec(self, session: Any, label: str) -> Any:
        """The private key handle, checked to be P-256 once when it is (re-)found, then cached."""
        cached = self._handles.get((ObjectClass.PRIVATE_KEY, label))
        if cached is not None:
            return cached
        obj = self.find(session, ObjectClass.PRIVATE_KEY, label)
        if obj is None:
            raise KeyNotFound(f"no key labelled {label!r} on token {self._token_label!r}")
        if obj[Attribute.KEY_TYPE] != KeyType.EC or obj[Attribute.EC_PARAMS] != P256_PARAMS:
            raise InvalidKey(f"key {label!r} is not a P-256 EC key")
        self._handles[(ObjectClass.PRIVATE_KEY, label)] = obj
        return obj

    def forget(self, label: str) -> None:
        """Drop the cached handles of ``label`` (its objects were destroyed)."""
        for key in [k for k in self._handles if k[1] == label]:
            del self._handles[key]
