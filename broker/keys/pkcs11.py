"""Key custody in a PKCS#11 token: :class:`Pkcs11KeyStore`, :class:`Pkcs11Signer`, :class:`Pkcs11Sealer`.

- The token is found by label (slot ids change), logged in once per process with one long-lived
  session (closing a logged-in session logs out every session of the application).
- Every PKCS#11 call runs under the lock of the loaded module (see :mod:`broker.keys.pkcs11_lib`).
- ES256 (RFC 7518 section 3.4): SHA-256 then ``CKM_ECDSA`` over the digest, or
  ``CKM_ECDSA_SHA256`` when the token offers it; the output is the raw 64-byte r||s.
- Failures are classified by the one table in :mod:`broker.keys.pkcs11_errors`; a lost session,
  a lost login or a re-initialised library is recovered once (TEST-CATALOGUE D01, D03-D06).
- With an injected :class:`broker.keys.health.HsmHealth` (D02, D03, D08): busy errors are retried
  with backoff, device calls are bounded in time, and a failed recovery puts the store DOWN (fail
  fast) until the background probe (:meth:`Pkcs11KeyStore.probe`) brings it back.
- Bounded waiting (D07): a call waits at most ``lock_timeout`` seconds (default: the health's
  ``op_timeout``) for the module lock, then fails with the retryable
  :class:`broker.errors.HsmBusy`; a store holds one session, so a burst never opens more.
- Fork safety (D12): in a child forked after ``C_Initialize`` the first call re-initialises the
  module (:meth:`broker.keys.pkcs11_lib.LoadedLibrary.adopt`), logs in again and re-finds the
  keys; the parent's sessions are forgotten, never closed from the child.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, TracerProvider
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

from broker.errors import (
    HsmBusy,
    HsmUnavailable,
    InvalidArgument,
    InvalidKey,
    KeyExists,
    KeyNotFound,
    KeyStoreError,
)
from broker.keys import pkcs11_lib
from broker.keys.api import ES256, KeyInfo
from broker.keys.health import HsmHealth
from broker.keys.pkcs11_errors import RECOVERABLE, Action, rule_for, to_broker_error
from broker.keys.uri import KeyRef

T = TypeVar("T")

P256_PARAMS: bytes = encode_named_curve_parameters("secp256r1")
GCM_IV_BYTES = 12
GCM_TAG_BITS = 128
_LOGIN_ATTEMPTS = 4
_LOGIN_BACKOFF = 0.05  # seconds, doubled per attempt
_MAX_LABEL = 255
# How CloudHSM reports throttling (D08): retried with backoff when a HsmHealth is injected.
_BUSY_ERRORS: tuple[type[p11e.PKCS11Error], ...] = (p11e.FunctionFailed, p11e.OperationActive)


class _Busy(Exception):
    """Internal: a busy device answered; the caller backs off (lock released) and retries."""

    def __init__(self, cause: p11e.PKCS11Error, what: str) -> None:
        super().__init__(what)
        self.cause = cause
        self.what = what


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
# The errors a token gives when an AES-GCM tag does not verify (SoftHSM 2.6: CKR_GENERAL_ERROR).
_GCM_AUTH_FAILURES: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
    p11e.GeneralError,
)


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


def _der_octet_string(data: bytes) -> bytes:
    if len(data) >= 128:
        raise ValueError("point too long")
    return b"\x04" + bytes([len(data)]) + data


def _check_label(label: str) -> None:
    if not isinstance(label, str) or not label or len(label.encode("utf-8")) > _MAX_LABEL:
        raise InvalidArgument("a key label must be a non-empty string of at most 255 bytes")


def _check_key_id(key_id: bytes) -> None:
    if not isinstance(key_id, bytes) or not key_id or len(key_id) > 255:
        raise InvalidArgument("a key id (CKA_ID) must be 1 to 255 bytes")


class Pkcs11KeyStore:
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
        self._module_path = module_path
        self._token_label = token_label
        self.__pin = pin
        self._tracer = trace.get_tracer("broker.keys", tracer_provider=tracer_provider)
        self._lib = pkcs11_lib.load(module_path)
        if lock_timeout is None and health is not None:
            lock_timeout = health.op_timeout
        self._lock_timeout = lock_timeout
        self._token: Any = None
        self._session: Any = None
        self._lib_generation = -1
        self._mechanisms: frozenset[Mechanism] = frozenset()
        self._handles: dict[tuple[ObjectClass, str], Any] = {}
        self._closed = False
        self.recoveries = 0  # how many times a session was rebuilt (for tests and metrics)
        self.sessions_opened = 0  # C_OpenSession calls that succeeded
        self.sessions_closed = 0  # C_CloseSession by this store
        self.sessions_abandoned = 0  # forgotten: the library was re-initialised or forked
        self.max_session_handle = 0  # the highest session handle this store was given
        self._health = health
        self._signing_labels: set[str] = set()  # keys the probe re-finds (D02)
        self._sealing_labels: set[str] = set()
        with self._lock:
            self._connect()
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
            f"Pkcs11KeyStore(module_path={self._module_path!r}, token_label={self._token_label!r})"
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
    def token_label(self) -> str:
        return self._token_label

    @property
    def _lock(self) -> threading.RLock:
        # Looked up at every use: a forked child gets a fresh lock (pkcs11_lib, D12).
        return self._lib.lock

    @property
    def lock_timeout(self) -> float | None:
        return self._lock_timeout

    @property
    def open_sessions(self) -> int:
        """Sessions this store holds open now (0 or 1): opened - closed - abandoned."""
        return self.sessions_opened - self.sessions_closed - self.sessions_abandoned

    def count_open_sessions(self) -> int | None:
        """Open sessions of the whole process on the module (``C_GetSessionInfo`` over every
        handle up to the highest this store saw, plus a margin); None if not measurable (D07)."""
        lock = self._take_lock("count sessions")
        try:
            return self._lib.count_open_sessions(self.max_session_handle + 64)
        finally:
            lock.release()

    def _take_lock(self, operation: str) -> threading.RLock:
        """Acquire the module lock, waiting at most :attr:`lock_timeout` (D07); the caller
        releases it. (A plain function, not a context manager: this runs on every signature.)"""
        lock = self._lib.lock
        if self._lock_timeout is None:
            lock.acquire()
        elif not lock.acquire(timeout=self._lock_timeout):
            raise HsmBusy(
                f"PKCS#11 {operation}: the HSM stayed busy for {self._lock_timeout:g} s; retry"
            )
        return lock

    @property
    def module_path(self) -> str:
        return self._lib.path

    @property
    def health(self) -> HsmHealth | None:
        return self._health

    @property
    def mechanisms(self) -> frozenset[Mechanism]:
        return self._mechanisms

    @property
    def sign_mechanism(self) -> Mechanism:
        if Mechanism.ECDSA_SHA256 in self._mechanisms:
            return Mechanism.ECDSA_SHA256
        return Mechanism.ECDSA

    # --- session management (lock held) -----------------------------------------------------

    def _connect(self) -> None:
        """Find the token by label, open one session and log in (retrying GeneralError)."""
        try:
            token = self._lib.lib.get_token(token_label=self._token_label)
            mechanisms = frozenset(token.slot.get_mechanisms())
            session = self._login(token)
        except p11e.PKCS11Error as exc:
            raise to_broker_error(exc, f"opening token {self._token_label!r}") from exc
        self._token = token
        self._session = session
        self._mechanisms = mechanisms
        self._handles.clear()
        self._lib_generation = self._lib.generation

    def _logged_in(self, session: Any) -> bool:
        if not self._lib.can_probe:
            return True
        state = self._lib.session_state(session.handle)
        return state in (pkcs11_lib.CKS_RO_USER_FUNCTIONS, pkcs11_lib.CKS_RW_USER_FUNCTIONS)

    def _login(self, token: Any) -> Any:
        # Login is per application: when another store of this process is already logged in,
        # a plain session is logged in too and C_Login would fail with USER_ALREADY_LOGGED_IN.
        # A store whose PIN differs from the one this process logged in with is refused, so a
        # wrong PIN is never accepted just because the token is already open.
        if self._lib.can_probe:
            plain = self._open(token)
            if self._logged_in(plain):
                if not self._lib.pin_matches(self._token_label, self.__pin):
                    self._close(plain)
                    raise p11e.PinIncorrect()
                return plain
            self._close(plain)  # a session opened without a PIN: C_CloseSession only, no logout
        for attempt in range(_LOGIN_ATTEMPTS):
            try:
                session = self._open(token, user_pin=self.__pin)
            except p11e.UserAlreadyLoggedIn:
                if not self._lib.pin_matches(self._token_label, self.__pin):
                    raise p11e.PinIncorrect() from None
                return self._open(token)
            except p11e.GeneralError:
                # Concurrent logins of several processes to one file token: transient.
                if attempt == _LOGIN_ATTEMPTS - 1:
                    raise
                time.sleep(_LOGIN_BACKOFF * (2**attempt))
                continue
            self._lib.remember_login(self._token_label, self.__pin)
            return session
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(self, token: Any, user_pin: str | None = None) -> Any:
        session = token.open(rw=True, user_pin=user_pin)
        self.sessions_opened += 1
        handle = getattr(session, "handle", None)
        if isinstance(handle, int):
            self.max_session_handle = max(self.max_session_handle, handle)
        return session

    def _close(self, session: Any) -> None:
        self.sessions_closed += 1
        with contextlib.suppress(p11e.PKCS11Error):  # already gone: that is why we drop it
            session.close()

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        self._handles.clear()
        if session is None:
            return
        if self._lib_generation != self._lib.generation or self._lib.stale:
            # The handle belongs to an earlier C_Initialize or to the parent process: its
            # number may now name another session (of this process), so never close it.
            self.sessions_abandoned += 1
            return
        self._close(session)

    def _recover(self, action: Action) -> None:
        self.recoveries += 1
        self._drop_session()
        if action is Action.REINIT:
            try:
                self._lib.reinitialize()
            except p11e.PKCS11Error as exc:
                raise HsmUnavailable("PKCS#11 library could not be re-initialised") from exc
        self._connect()

    def _recover_or_down(self, action: Action, first: p11e.PKCS11Error | None) -> None:
        """Recover; a retryable failure of the recovery itself puts the HSM DOWN (D02, D03)."""
        try:
            self._recover(action)
        except KeyStoreError as err:
            if isinstance(err, HsmUnavailable) or err.retryable:
                if self._health is not None:
                    self._health.mark_down(err)
                if first is not None:
                    raise err from first
            raise

    def _attempt(self, operation: str, fn: Callable[[Any], T]) -> T:
        """``fn(session)`` with at most one recovery (lock held). Raises :class:`_Busy` for a
        busy device only when a :class:`HsmHealth` is injected."""
        if self._closed:
            raise KeyStoreError(f"key store for token {self._token_label!r} is closed")
        if self._lib.stale:
            self._adopt()
        if self._session is None or self._lib_generation != self._lib.generation:
            self._recover_or_down(Action.NEW_SESSION, None)
        recovered = False
        while True:
            try:
                return fn(self._session)
            except p11e.PKCS11Error as exc:
                rule = rule_for(exc)
                busy = self._health is not None and (
                    rule.action is Action.BUSY or isinstance(exc, _BUSY_ERRORS)
                )
                if busy:
                    if rule.action in RECOVERABLE:  # never reuse the session (D06)
                        self._recover_or_down(rule.action, exc)
                    raise _Busy(exc, rule.what) from exc
                if recovered and (rule.action in RECOVERABLE or rule.action is Action.BUSY):
                    err = HsmUnavailable(
                        f"PKCS#11 {operation} failed again after recovery: {rule.what}"
                    )
                    if self._health is not None and rule.action in RECOVERABLE:
                        self._health.mark_down(err)
                    raise err from exc
                if rule.action not in RECOVERABLE:
                    raise to_broker_error(exc, operation) from exc
                self._recover_or_down(rule.action, exc)
                recovered = True

    def _adopt(self) -> None:
        """In a forked child: re-initialise the module here before any other call (D12)."""
        self._drop_session()  # forgotten, not closed: it is the parent's
        try:
            self._lib.adopt()
        except p11e.PKCS11Error as exc:
            raise HsmUnavailable("PKCS#11 library could not be re-initialised after fork") from exc

    def _run(self, operation: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(session)`` under the lock; recover once from a lost session/login/library.

        With a :class:`HsmHealth`: fail fast while DOWN, and retry a busy device at most
        ``busy_retries`` times with backoff, sleeping without the lock (D08).
        """
        health = self._health
        if health is None:
            lock = self._take_lock(operation)
            try:
                return self._attempt(operation, fn)
            finally:
                lock.release()
        delays = health.busy_delays()
        while True:
            health.check()
            lock = self._take_lock(operation)
            try:
                return self._attempt(operation, fn)
            except _Busy as busy:
                delay = next(delays, None)
                if delay is None:
                    raise HsmUnavailable(
                        f"PKCS#11 {operation}: HSM still busy after "
                        f"{health.busy_retries} retries: {busy.what}"
                    ) from busy.cause
            finally:
                lock.release()
            health.sleep(delay)

    def probe(self) -> None:
        """Reopen the token from scratch (D02, D03): ``C_Finalize`` + ``C_Initialize``, find the
        token by label, log in, re-find every key a signer or sealer was made for.

        Raises a :class:`broker.errors.KeyStoreError` while that fails. Used by the health probe.
        """
        with self._lock:
            if self._closed:
                raise KeyStoreError(f"key store for token {self._token_label!r} is closed")
            if self._lib.stale:
                self._adopt()
            self._drop_session()
            try:
                self._lib.reinitialize()
            except p11e.PKCS11Error as exc:
                raise HsmUnavailable("PKCS#11 library could not be re-initialised") from exc
            self._connect()
            try:
                for label in sorted(self._signing_labels):
                    self._private_ec(self._session, label)
                for label in sorted(self._sealing_labels):
                    self._handle(self._session, ObjectClass.SECRET_KEY, label)
            except p11e.PKCS11Error as exc:
                self._drop_session()
                raise to_broker_error(exc, "probe") from exc
            except KeyStoreError:
                self._drop_session()
                raise

    # --- object lookup (inside _run) --------------------------------------------------------

    def _find(self, session: Any, object_class: ObjectClass, label: str) -> Any | None:
        if not self._logged_in(session):
            # An empty search would wrongly say "no such key": recover the login first (D04).
            raise p11e.UserNotLoggedIn()
        found = list(session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label}))
        if len(found) > 1:
            raise InvalidKey(f"{len(found)} objects of one class carry the label {label!r}")
        return found[0] if found else None

    def _handle(self, session: Any, object_class: ObjectClass, label: str) -> Any:
        key = (object_class, label)
        obj = self._handles.get(key)
        if obj is None:
            obj = self._find(session, object_class, label)
            if obj is None:
                raise KeyNotFound(f"no key labelled {label!r} on token {self._token_label!r}")
            self._handles[key] = obj
        return obj

    def _private_ec(self, session: Any, label: str) -> Any:
        """The private key handle, checked to be P-256 once when it is (re-)found, then cached."""
        cached = self._handles.get((ObjectClass.PRIVATE_KEY, label))
        if cached is not None:
            return cached
        obj = self._find(session, ObjectClass.PRIVATE_KEY, label)
        if obj is None:
            raise KeyNotFound(f"no key labelled {label!r} on token {self._token_label!r}")
        if obj[Attribute.KEY_TYPE] != KeyType.EC or obj[Attribute.EC_PARAMS] != P256_PARAMS:
            raise InvalidKey(f"key {label!r} is not a P-256 EC key")
        self._handles[(ObjectClass.PRIVATE_KEY, label)] = obj
        return obj

    def _info(self, session: Any, label: str) -> KeyInfo:
        priv = self._private_ec(session, label)
        pub = self._find(session, ObjectClass.PUBLIC_KEY, label)
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
        ref = KeyRef(
            token=self._token_label, object=label, id=key_id, module_path=self._module_path
        )
        return KeyInfo(
            label=label,
            key_id=key_id,
            public_key=public_key,
            attributes=attributes,
            uri=ref.to_uri(),
        )

    def _ensure_absent(self, session: Any, label: str, classes: tuple[ObjectClass, ...]) -> None:
        for object_class in classes:
            if self._find(session, object_class, label) is not None:
                raise KeyExists(f"a key labelled {label!r} already exists on the token")

    # --- KeyStore ---------------------------------------------------------------------------

    def generate(self, label: str, key_id: bytes) -> KeyInfo:
        """Generate a P-256 pair: private key TOKEN, PRIVATE, SENSITIVE, non-extractable, sign-only."""
        _check_label(label)
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

        return self._run("generate", fn)

    def import_key(
        self, label: str, key_id: bytes, private_key: ec.EllipticCurvePrivateKey
    ) -> KeyInfo:
        """Import a P-256 key as a sensitive, non-extractable, sign-only token object."""
        _check_label(label)
        _check_key_id(key_id)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise InvalidKey("only P-256 private keys can be imported")
        scalar = private_key.private_numbers().private_value.to_bytes(32, "big")
        point = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

        def fn(session: Any) -> KeyInfo:
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
                    Attribute.EC_POINT: _der_octet_string(point),
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
                with contextlib.suppress(p11e.PKCS11Error):
                    pub.destroy()  # lose nothing, leave nothing half-made
                raise
            return self._info(session, label)

        return self._run("import", fn)

    def get(self, label: str) -> KeyInfo:
        _check_label(label)
        return self._run("get", lambda session: self._info(session, label))

    def list(self) -> list[KeyInfo]:
        def fn(session: Any) -> list[KeyInfo]:
            if not self._logged_in(session):
                raise p11e.UserNotLoggedIn()
            labels = sorted(
                {
                    str(obj[Attribute.LABEL])
                    for obj in session.get_objects(
                        {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC}
                    )
                }
            )
            return [self._info(session, label) for label in labels]

        return self._run("list", fn)

    def signer(self, label: str) -> Pkcs11Signer:
        """A :class:`Pkcs11Signer` for ``label``: P-256, ``CKA_SIGN`` true, kid = its did:key."""
        info = self.get(label)
        if not info.attributes.get("sign"):
            raise InvalidKey(f"key {label!r} is not allowed to sign (CKA_SIGN is false)")
        self._signing_labels.add(label)
        return Pkcs11Signer(self, label, info.kid, self.sign_mechanism, tracer=self._tracer)

    def delete(self, label: str) -> None:
        """Destroy every object (private, public, secret) labelled ``label``."""
        _check_label(label)

        def fn(session: Any) -> None:
            found = [
                obj
                for object_class in (
                    ObjectClass.PRIVATE_KEY,
                    ObjectClass.PUBLIC_KEY,
                    ObjectClass.SECRET_KEY,
                )
                for obj in [self._find(session, object_class, label)]
                if obj is not None
            ]
            if not found:
                raise KeyNotFound(f"no key labelled {label!r} on token {self._token_label!r}")
            for obj in found:
                obj.destroy()
            for key in [k for k in self._handles if k[1] == label]:
                del self._handles[key]

        self._run("delete", fn)

    def close(self) -> None:
        """Close the session (this logs the process out of the token). Idempotent."""
        if self._health is not None:
            self._health.stop()  # before the lock: the probe may be waiting for it
        with self._lock:
            if not self._closed:
                self._closed = True
                self._drop_session()

    # --- signing and sealing (used by the signer and sealer) ---------------------------------

    def sign_raw(self, label: str, data: bytes, mechanism: Mechanism) -> bytes:
        """``C_Sign`` with the private key ``label`` over ``data`` (a digest for CKM_ECDSA)."""

        def fn(session: Any) -> bytes:
            return bytes(self._private_ec(session, label).sign(data, mechanism=mechanism))

        if self._health is not None and self._health.op_timeout is not None:
            return self._health.bounded("sign", lambda: self._run("sign", fn))
        return self._run("sign", fn)

    def generate_sealing_key(self, label: str, key_id: bytes) -> None:
        """An AES-256 key on the token: sensitive, non-extractable, ENCRYPT/DECRYPT only."""
        _check_label(label)
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

        self._run("generate sealing key", fn)

    def sealer(self, label: str) -> Pkcs11Sealer:
        """An AES-256-GCM :class:`broker.keys.api.Sealer` whose key stays in the token."""
        _check_label(label)
        if Mechanism.AES_GCM not in self._mechanisms:
            raise KeyStoreError(
                f"token {self._token_label!r} does not offer CKM_AES_GCM: sealing is unavailable"
            )

        def fn(session: Any) -> None:
            key = self._handle(session, ObjectClass.SECRET_KEY, label)
            if key[Attribute.KEY_TYPE] != KeyType.AES or key[Attribute.VALUE_LEN] != 32:
                raise InvalidKey(f"sealing key {label!r} is not an AES-256 key")

        self._run("find sealing key", fn)
        self._sealing_labels.add(label)
        return Pkcs11Sealer(self, label)

    def gcm(self, label: str, data: bytes, iv: bytes, aad: bytes, *, encrypt: bool) -> bytes:
        """AES-GCM encrypt or decrypt in the token with the secret key ``label``."""
        params = GCMParams(iv, aad if aad else None, GCM_TAG_BITS)

        def fn(session: Any) -> bytes:
            key = self._handle(session, ObjectClass.SECRET_KEY, label)
            if encrypt:
                return bytes(key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=params))
            try:
                return bytes(key.decrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=params))
            except _GCM_AUTH_FAILURES:
                raise KeyStoreError(
                    "sealed value does not authenticate (wrong key, wrong context or tampered)"
                ) from None

        return self._run("seal" if encrypt else "open", fn)


class Pkcs11Signer:
    """ES256 with a key that stays in the token. ``kid`` = the key's bare did:key."""

    def __init__(
        self,
        store: Pkcs11KeyStore,
        label: str,
        kid: str,
        mechanism: Mechanism,
        *,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._store = store
        self._label = label
        self._kid = kid
        self._mechanism = mechanism
        self._tracer = tracer or trace.get_tracer("broker.keys")

    def __repr__(self) -> str:
        return (
            f"Pkcs11Signer(label={self._label!r}, kid={self._kid!r}, mechanism={self.mechanism!r})"
        )

    @property
    def label(self) -> str:
        return self._label

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def alg(self) -> str:
        return ES256

    @property
    def mechanism(self) -> str:
        return "CKM_ECDSA_SHA256" if self._mechanism is Mechanism.ECDSA_SHA256 else "CKM_ECDSA"

    def sign(self, message: bytes) -> bytes:
        """The JOSE ES256 signature of ``message``: raw r||s, 64 bytes (RFC 7518 section 3.4)."""
        # start_span, not start_as_current_span: nothing nests below this span, and skipping the
        # context attach/detach halves the tracing cost on the signing hot path.
        span = self._tracer.start_span(
            "keys.sign", attributes={"kid": self._kid, "mechanism": self.mechanism}
        )
        try:
            if self._mechanism is Mechanism.ECDSA_SHA256:
                data = message
            else:
                data = hashlib.sha256(message).digest()
            signature = self._store.sign_raw(self._label, data, self._mechanism)
            if len(signature) != 64:
                raise InvalidKey(f"token returned a {len(signature)}-byte ECDSA signature, not 64")
            return signature
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()


class Pkcs11Sealer:
    """AES-256-GCM in the token; output = 12-byte IV || ciphertext || 16-byte tag."""

    def __init__(self, store: Pkcs11KeyStore, label: str) -> None:
        self._store = store
        self._label = label

    def __repr__(self) -> str:
        return f"Pkcs11Sealer(key_label={self._label!r})"

    @property
    def key_label(self) -> str:
        return self._label

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        iv = os.urandom(GCM_IV_BYTES)
        return iv + self._store.gcm(self._label, plaintext, iv, aad, encrypt=True)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < GCM_IV_BYTES + GCM_TAG_BITS // 8:
            raise KeyStoreError("sealed value is too short")
        iv, body = sealed[:GCM_IV_BYTES], sealed[GCM_IV_BYTES:]
        return self._store.gcm(self._label, body, iv, aad, encrypt=False)
