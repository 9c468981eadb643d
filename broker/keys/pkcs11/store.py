"""Key custody in a PKCS#11 token: :class:`Pkcs11KeyStore`, opening the token and lookup.

The store is composed of a :class:`broker.keys.pkcs11.session.Pkcs11Session` (login, locking,
recovery, cached handles) on the process-wide library of :mod:`broker.keys.pkcs11.lib`; it finds
and lists keys by label, hands out :class:`broker.keys.pkcs11.signer.Pkcs11Signer` and
:class:`broker.keys.pkcs11.sealing.Pkcs11Sealer` objects that share its session, and re-finds
their keys for the health probe. Generating, importing and deleting keys is the mixed-in
:class:`broker.keys.pkcs11.lifecycle.KeyLifecycle`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from broker.errors import InvalidArgument, InvalidKey, KeyStoreError
from broker.keys.api import HalfKey, KeyInfo
from broker.keys.health import HsmHealth
from broker.keys.pkcs11 import lib as pkcs11_lib
from broker.keys.pkcs11.lifecycle import KeyLifecycle
from broker.keys.pkcs11.objects import check_label
from broker.keys.pkcs11.sealing import Pkcs11Sealer
from broker.keys.pkcs11.session import Pkcs11Session
from broker.keys.pkcs11.signer import Pkcs11Signer
from broker.keys.uri import KeyRef

T = TypeVar("T")

KEY_ATTRIBUTES: Mapping[str, Attribute] = {
    "sensitive": Attribute.SENSITIVE,
    "extractable": Attribute.EXTRACTABLE,
    "never_extractable": Attribute.NEVER_EXTRACTABLE,
    "always_sensitive": Attribute.ALWAYS_SENSITIVE,
    "local": Attribute.LOCAL,
    "token": Attribute.TOKEN,
    "private": Attribute.PRIVATE,
    "sign": Attribute.SIGN,
    "decrypt": Attribute.DECRYPT,
    "derive": Attribute.DERIVE,
    "unwrap": Attribute.UNWRAP,
}


def ec_point_to_public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from ``CKA_EC_POINT``: a DER OCTET STRING (PKCS#11) or a bare point."""
    point = raw
    if len(raw) in (67, 35) and raw[0] == 0x04 and raw[1] == len(raw) - 2:
        point = raw[2:]
    elif len(raw) == 68 and raw[:3] == b"\x04\x81\x41":
        point = raw[3:]
    if len(point) not in (65, 33):
        raise InvalidKey(f"CKA_EC_POINT of {len(raw)} bytes is not a P-256 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise InvalidKey("CKA_EC_POINT is not a valid P-256 point") from exc


class Pkcs11KeyStore(KeyLifecycle):
    """KeyStore + KeyDeleter over one PKCS#11 token found by label. Thread-safe; a context manager."""

    def __init__(
        self,
        module_path: str,
        token_label: str,
        pin: str,
        *,
        tracer_provider: TracerProvider | None = None,
        health: HsmHealth | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        """``lock_timeout``: seconds a call may wait for the module lock before
        :class:`broker.errors.HsmBusy`; default the health's ``op_timeout``, else unbounded."""
        if not token_label:
            raise InvalidArgument("a token label is required")
        if not pin:
            raise InvalidArgument("a user PIN is required")
        if lock_timeout is not None and not lock_timeout > 0:
            raise InvalidArgument("lock_timeout must be positive (or None)")
        if lock_timeout is None and health is not None:
            lock_timeout = health.op_timeout
        self._module_path = module_path
        self._tracer = trace.get_tracer("broker.keys", tracer_provider=tracer_provider)
        self._session = Pkcs11Session(
            pkcs11_lib.load(module_path),
            token_label,
            pin,
            health=health,
            lock_timeout=lock_timeout,
        )
        self._signing_labels: set[str] = set()  # keys the probe re-finds (D02)
        self._sealing_labels: set[str] = set()
        if health is not None:
            health.bind(self.probe)

    @classmethod
    def from_ref(
        cls,
        ref: KeyRef,
        *,
        tracer_provider: TracerProvider | None = None,
        health: HsmHealth | None = None,
    ) -> Pkcs11KeyStore:
        """A store for ``ref.token`` using its module (default: SoftHSM2) and PIN source."""
        module = ref.module_path or pkcs11_lib.default_module_path()
        return cls(
            module, ref.token, ref.read_pin(), tracer_provider=tracer_provider, health=health
        )

    def __repr__(self) -> str:
        return (
            f"Pkcs11KeyStore(module_path={self._module_path!r}, token_label={self.token_label!r})"
        )

    def __enter__(self) -> Pkcs11KeyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def session(self) -> Pkcs11Session:
        """The logged-in session (its lock, counters and recovery) shared by signers and sealers."""
        return self._session

    @property
    def token_label(self) -> str:
        return self._session.token_label

    @property
    def module_path(self) -> str:
        return self._session.lib.path

    @property
    def health(self) -> HsmHealth | None:
        return self._session.health

    @property
    def mechanisms(self) -> frozenset[Mechanism]:
        return self._session.mechanisms

    @property
    def sign_mechanism(self) -> Mechanism:
        if Mechanism.ECDSA_SHA256 in self.mechanisms:
            return Mechanism.ECDSA_SHA256
        return Mechanism.ECDSA

    # --- for subclasses (the ceremony store): ``self.session.run`` / ``.logged_in`` ------------

    def _run(self, operation: str, fn: Callable[[Any], T]) -> T:
        return self._session.run(operation, fn)

    def _logged_in(self, session: Any) -> bool:
        return self._session.logged_in(session)

    # --- lookup (inside session.run) ---------------------------------------------------------

    def _info(self, session: Any, label: str) -> KeyInfo:
        priv = self._session.private_ec(session, label)
        pub = self._session.find(session, ObjectClass.PUBLIC_KEY, label)
        if pub is None:
            raise InvalidKey(f"key {label!r} has no public half on the token")
        public_key = ec_point_to_public_key(bytes(pub[Attribute.EC_POINT]))
        attributes: dict[str, bool] = {}
        for name, attr in KEY_ATTRIBUTES.items():
            try:
                attributes[name] = bool(priv[attr])
            except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
                attributes[name] = False
        key_id = bytes(priv[Attribute.ID])
        ref = KeyRef(token=self.token_label, object=label, id=key_id, module_path=self._module_path)
        return KeyInfo(
            label=label,
            key_id=key_id,
            public_key=public_key,
            attributes=attributes,
            uri=ref.to_uri(),
        )

    # --- KeyStore (generate, import_key, delete: KeyLifecycle) --------------------------------

    def get(self, label: str) -> KeyInfo:
        check_label(label)
        return self._session.run("get", lambda session: self._info(session, label))

    def list_half_keys(self) -> list[HalfKey]:
        """The signing keys of which the token holds only the public or only the private
        object, in label order."""

        def fn(session: Any) -> list[HalfKey]:
            private, public = self._ec_objects(session)
            found = [
                HalfKey(lbl, kid, "private") for lbl, kid in private.items() if lbl not in public
            ]
            found += [
                HalfKey(lbl, kid, "public") for lbl, kid in public.items() if lbl not in private
            ]
            return sorted(found, key=lambda half: half.label)

        return self._session.run("list half keys", fn)

    def list(self) -> list[KeyInfo]:
        """The signing keys with both objects in the token (see :meth:`list_half_keys`)."""

        def fn(session: Any) -> list[KeyInfo]:
            private, public = self._ec_objects(session)
            return [self._info(session, label) for label in sorted(private.keys() & public)]

        return self._session.run("list", fn)

    def _ec_objects(self, session: Any) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """``{label: id}`` of the EC private objects and of the EC public objects."""
        if not self._session.logged_in(session):
            raise p11e.UserNotLoggedIn()  # an empty search would hide the private objects

        def by_label(object_class: ObjectClass) -> dict[str, bytes]:
            found = session.get_objects(
                {Attribute.CLASS: object_class, Attribute.KEY_TYPE: KeyType.EC}
            )
            return {str(obj[Attribute.LABEL]): bytes(obj[Attribute.ID]) for obj in found}

        return by_label(ObjectClass.PRIVATE_KEY), by_label(ObjectClass.PUBLIC_KEY)

    def signer(self, label: str) -> Pkcs11Signer:
        """A :class:`Pkcs11Signer` for ``label``: P-256, ``CKA_SIGN`` true, kid = its did:key."""
        info = self.get(label)
        if not info.attributes.get("sign"):
            raise InvalidKey(f"key {label!r} is not allowed to sign (CKA_SIGN is false)")
        self._signing_labels.add(label)
        return Pkcs11Signer(
            self._session, label, info.kid, self.sign_mechanism, tracer=self._tracer
        )

    def sealer(self, label: str) -> Pkcs11Sealer:
        """An AES-256-GCM :class:`broker.keys.api.Sealer` whose key stays in the token."""
        check_label(label)
        if Mechanism.AES_GCM not in self.mechanisms:
            raise KeyStoreError(
                f"token {self.token_label!r} does not offer CKM_AES_GCM: sealing is unavailable"
            )

        def fn(session: Any) -> None:
            key = self._session.handle(session, ObjectClass.SECRET_KEY, label)
            if key[Attribute.KEY_TYPE] != KeyType.AES or key[Attribute.VALUE_LEN] != 32:
                raise InvalidKey(f"sealing key {label!r} is not an AES-256 key")

        self._session.run("find sealing key", fn)
        self._sealing_labels.add(label)
        return Pkcs11Sealer(self._session, label)

    def probe(self) -> None:
        """Reopen the token from scratch (D02, D03) and re-find every key a signer or sealer was
        made for. Raises a :class:`broker.errors.KeyStoreError` while that fails. Used by the
        health probe."""

        def refind(session: Any) -> None:
            for label in sorted(self._signing_labels):
                self._session.private_ec(session, label)
            for label in sorted(self._sealing_labels):
                self._session.handle(session, ObjectClass.SECRET_KEY, label)

        self._session.reopen(refind)

    def close(self) -> None:
        """Close the session (this logs the process out of the token). Idempotent."""
        health = self._session.health
        if health is not None:
            health.stop()  # before the lock: the probe may be waiting for it
        self._session.close()
