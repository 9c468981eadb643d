"""The one logged-in PKCS#11 session of a key store: login, recovery, re-find, counters.

- The token is found by label (slot ids change), logged in once per process with one long-lived
  session (closing a logged-in session logs out every session of the application).
- Every PKCS#11 call runs under the lock of the loaded module (:mod:`broker.keys.pkcs11.lib`),
  taken by :meth:`Pkcs11Session.run`; it waits at most ``lock_timeout`` seconds, then fails with
  the retryable :class:`broker.errors.HsmBusy` (D07). One session per store: a burst never
  opens more.
- Key objects are found by label and their handles cached per session by the mixed-in
  :class:`broker.keys.pkcs11.objects.ObjectHandles`.
- Failures are classified by the one table in :mod:`broker.keys.pkcs11.recovery`; a lost
  session, a lost login or a re-initialised library is recovered once (D01, D03-D06), and the
  key handles found since are forgotten and found again on next use.
- With an injected :class:`broker.keys.health.HsmHealth` (D02, D03, D08): busy errors are retried
  with backoff (sleeping without the lock), and a failed recovery puts the token DOWN (fail fast)
  until the background probe (:meth:`Pkcs11Session.reopen`) brings it back.
- Fork safety (D12): in a child forked after ``C_Initialize`` the first call re-initialises the
  module (:meth:`broker.keys.pkcs11.lib.LoadedLibrary.adopt`), logs in again and re-finds the
  keys; the parent's session is forgotten, never closed from the child.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11.exceptions as p11e
from pkcs11 import Mechanism, ObjectClass

from broker.errors import HsmBusy, HsmUnavailable, KeyStoreError
from broker.keys.health import HsmHealth
from broker.keys.pkcs11.hints import missing_token_hint, with_hint
from broker.keys.pkcs11.lib import CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS, LoadedLibrary
from broker.keys.pkcs11.objects import ObjectHandles
from broker.keys.pkcs11.recovery import RECOVERABLE, Action, rule_for, to_broker_error

T = TypeVar("T")

_LOGGED_IN = (CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS)
_LOGIN_ATTEMPTS = 4
_LOGIN_BACKOFF = 0.05  # seconds, doubled per attempt
# How CloudHSM reports throttling (D08): retried with backoff when a HsmHealth is injected.
_BUSY_ERRORS: tuple[type[p11e.PKCS11Error], ...] = (p11e.FunctionFailed, p11e.OperationActive)


class _Busy(Exception):
    """Internal: a busy device answered; the caller backs off (lock released) and retries."""

    def __init__(self, cause: p11e.PKCS11Error, what: str) -> None:
        super().__init__(what)
        self.cause = cause
        self.what = what


class Pkcs11Session(ObjectHandles):
    """One token of one loaded module, one logged-in session, its cached object handles (found
    by :class:`broker.keys.pkcs11.objects.ObjectHandles`)."""

    def __init__(
        self,
        lib: LoadedLibrary,
        token_label: str,
        pin: str,
        *,
        health: HsmHealth | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        self._lib = lib
        self._token_label = token_label
        self.__pin = pin
        self._health = health
        self._lock_timeout = lock_timeout
        self._token: Any = None
        self._session: Any = None
        self._lib_generation = -1
        self._mechanisms: frozenset[Mechanism] = frozenset()
        self._handles: dict[tuple[ObjectClass, str], Any] = {}
        self._closed = False
        self.recoveries = 0  # how many times the session was rebuilt (for tests and metrics)
        self.sessions_opened = 0  # C_OpenSession calls that succeeded
        self.sessions_closed = 0  # C_CloseSession by this store
        self.sessions_abandoned = 0  # forgotten: the library was re-initialised or forked
        self.max_session_handle = 0  # the highest session handle this store was given
        with self.lock:
            self._connect()

    def __repr__(self) -> str:
        return f"Pkcs11Session(token_label={self._token_label!r}, module={self._lib.path!r})"

    # --- what the store and the signer read --------------------------------------------------

    @property
    def lib(self) -> LoadedLibrary:
        return self._lib

    @property
    def lock(self) -> threading.RLock:
        """The module lock. Looked up at every use: a forked child gets a fresh one (D12)."""
        return self._lib.lock

    @property
    def token_label(self) -> str:
        return self._token_label

    @property
    def token(self) -> Any:
        """The python-pkcs11 ``Token`` found by label (None before the first connect)."""
        return self._token

    @property
    def current(self) -> Any:
        """The python-pkcs11 ``Session`` open now; None after a drop (reopened on next use)."""
        return self._session

    @property
    def health(self) -> HsmHealth | None:
        return self._health

    @property
    def lock_timeout(self) -> float | None:
        return self._lock_timeout

    @property
    def mechanisms(self) -> frozenset[Mechanism]:
        return self._mechanisms

    @property
    def open_sessions(self) -> int:
        """Sessions held open now (0 or 1): opened - closed - abandoned."""
        return self.sessions_opened - self.sessions_closed - self.sessions_abandoned

    def count_open_sessions(self) -> int | None:
        """Open sessions of the whole process on the module (``C_GetSessionInfo`` over every
        handle up to the highest this store saw, plus a margin); None if not measurable (D07)."""
        lock = self.take_lock("count sessions")
        try:
            return self._lib.count_open_sessions(self.max_session_handle + 64)
        finally:
            lock.release()

    def take_lock(self, operation: str) -> threading.RLock:
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

    # --- login (lock held) ---------------------------------------------------------------------

    def _connect(self) -> None:
        """Find the token by label, open one session and log in (retrying GeneralError)."""
        try:
            token = self._lib.lib.get_token(token_label=self._token_label)
            mechanisms = frozenset(token.slot.get_mechanisms())
            session = self.login(token)
        except p11e.NoSuchToken as exc:
            error = to_broker_error(exc, f"opening token {self._token_label!r}")
            hint = missing_token_hint(self._lib.lib, self._lib.path, self._token_label)
            raise with_hint(error, hint) from exc
        except p11e.PKCS11Error as exc:
            raise to_broker_error(exc, f"opening token {self._token_label!r}") from exc
        self._token = token
        self._session = session
        self._mechanisms = mechanisms
        self._handles.clear()
        self._lib_generation = self._lib.generation

    def logged_in(self, session: Any) -> bool:
        if not self._lib.can_probe:
            return True
        return self._lib.session_state(session.handle) in _LOGGED_IN

    def login(self, token: Any) -> Any:
        """A logged-in session on ``token``.

        Login is per application: when another store of this process is already logged in, a
        plain session is logged in too and C_Login would fail with USER_ALREADY_LOGGED_IN. A
        store whose PIN differs from the one this process logged in with is refused, so a wrong
        PIN is never accepted just because the token is already open.
        """
        if self._lib.can_probe:
            plain = self._open(token)
            if self.logged_in(plain):
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

    def _drop(self) -> None:
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

    # --- recovery (lock held) ------------------------------------------------------------------

    def _recover(self, action: Action) -> None:
        self.recoveries += 1
        self._drop()
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

    def _adopt(self) -> None:
        """In a forked child: re-initialise the module here before any other call (D12)."""
        self._drop()  # forgotten, not closed: it is the parent's
        try:
            self._lib.adopt()
        except p11e.PKCS11Error as exc:
            raise HsmUnavailable("PKCS#11 library could not be re-initialised after fork") from exc

    def _attempt(self, operation: str, fn: Callable[[Any], T]) -> T:
        """``fn(session)`` with at most one recovery (lock held). Raises :class:`_Busy` for a
        busy device only when a :class:`HsmHealth` is injected."""
        if self._closed:
            raise KeyStoreError(f"key store for token {self._token_label!r} is closed")
        lib = self._lib
        if lib.stale:
            self._adopt()
        if self._session is None or self._lib_generation != lib.generation:
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

    def run(self, operation: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(session)`` under the lock; recover once from a lost session/login/library.

        With a :class:`HsmHealth`: fail fast while DOWN, and retry a busy device at most
        ``busy_retries`` times with backoff, sleeping without the lock (D08).
        """
        health = self._health
        if health is None:
            lock = self.take_lock(operation)
            try:
                return self._attempt(operation, fn)
            finally:
                lock.release()
        delays = health.busy_delays()
        while True:
            health.check()
            lock = self.take_lock(operation)
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

    def reopen(self, refind: Callable[[Any], None]) -> None:
        """Reopen the token from scratch (D02, D03): ``C_Finalize`` + ``C_Initialize``, find the
        token by label, log in, then ``refind(session)`` the keys in use.

        Raises a :class:`broker.errors.KeyStoreError` while that fails.
        """
        with self.lock:
            if self._closed:
                raise KeyStoreError(f"key store for token {self._token_label!r} is closed")
            if self._lib.stale:
                self._adopt()
            self._drop()
            try:
                self._lib.reinitialize()
            except p11e.PKCS11Error as exc:
                raise HsmUnavailable("PKCS#11 library could not be re-initialised") from exc
            self._connect()
            try:
                refind(self._session)
            except p11e.PKCS11Error as exc:
                self._drop()
                raise to_broker_error(exc, "probe") from exc
            except KeyStoreError:
                self._drop()
                raise

    def close(self) -> None:
        """Close the session (this logs the process out of the token). Idempotent."""
        with self.lock:
            if not self._closed:
                self._closed = True
                self._drop()
