"""The process-wide PKCS#11 library cache: the one piece of module-level mutable state.

python-pkcs11 0.10 calls ``C_Initialize(NULL)``, i.e. without ``CKF_OS_LOCKING_OK``, and
releases the GIL around every call: SoftHSM then runs without locks and two threads inside it at
once crash the process. So each loaded module gets exactly one :class:`LoadedLibrary` with one
lock, and every PKCS#11 call of every store on that module runs under that lock.

``C_GetSessionInfo`` (the session health check of D01/D04) is not exposed by python-pkcs11; it is
called through ``ctypes`` on the same, already loaded shared object.

Fork safety (TEST-CATALOGUE D12): a child forked after ``C_Initialize`` must not use its parent's
PKCS#11 state (sessions, object handles, login, the module's own locks). An
``os.register_at_fork(after_in_child=...)`` hook gives every loaded module a fresh lock in the
child (a parent thread may have held the old one at fork time) and forgets the parent's logins;
the first store call in the child then sees :meth:`LoadedLibrary.stale` and calls
:meth:`LoadedLibrary.adopt`: ``C_Finalize`` (its error ignored) + ``C_Initialize`` in the child,
which bumps :attr:`LoadedLibrary.generation` so every store opens, logs in and re-finds its keys
lazily. Sessions of the parent are forgotten, never closed from the child (closing a handle
number of the parent could close or log out a session the child opened since).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pkcs11

from broker.errors import ConfigError
from broker.keys.pkcs11.hints import module_load_hint

DEFAULT_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
)

CKS_RO_USER_FUNCTIONS = 1
CKS_RW_USER_FUNCTIONS = 3
CKR_OK = 0

log = logging.getLogger("broker.keys.pkcs11")


class _SessionInfo(ctypes.Structure):
    _fields_ = [
        ("slot_id", ctypes.c_ulong),
        ("state", ctypes.c_ulong),
        ("flags", ctypes.c_ulong),
        ("device_error", ctypes.c_ulong),
    ]


@dataclass
class LoadedLibrary:
    """One loaded PKCS#11 module, its lock and its ctypes view."""

    path: str
    lib: Any = field(repr=False)
    lock: threading.RLock = field(repr=False)
    _cdll: ctypes.CDLL | None = field(default=None, repr=False)
    generation: int = 0  # bumped at every re-initialisation
    pid: int = field(default_factory=os.getpid)  # the process that initialised the module
    adoptions: int = 0  # re-initialisations after a fork, in this process
    # SHA-256 of the PIN this process logged in with, per token label: login is per process, so
    # a later store with another PIN must not ride on an earlier login.
    _logins: dict[str, bytes] = field(default_factory=dict, repr=False)

    def remember_login(self, token_label: str, pin: str) -> None:
        self._logins[token_label] = hashlib.sha256(pin.encode("utf-8")).digest()

    def pin_matches(self, token_label: str, pin: str) -> bool:
        """False only when this process logged in to ``token_label`` with a different PIN."""
        known = self._logins.get(token_label)
        if known is None:
            return True
        return hmac.compare_digest(known, hashlib.sha256(pin.encode("utf-8")).digest())

    @property
    def can_probe(self) -> bool:
        """Whether ``C_GetSessionInfo`` can be called directly on this module."""
        return self._cdll is not None and hasattr(self._cdll, "C_GetSessionInfo")

    def session_state(self, handle: int) -> int | None:
        """``CK_SESSION_INFO.state`` of ``handle``; None if the session is invalid or unknown.

        Call with :attr:`lock` held.
        """
        if self._cdll is None:
            return None
        func = getattr(self._cdll, "C_GetSessionInfo", None)
        if func is None:
            return None
        info = _SessionInfo()
        rv = func(ctypes.c_ulong(handle), ctypes.byref(info))
        if rv != CKR_OK:
            return None
        return int(info.state)

    def count_open_sessions(self, max_handle: int) -> int | None:
        """How many of the session handles ``1..max_handle`` are open in this process (a
        ``C_GetSessionInfo`` per handle); None without ``C_GetSessionInfo``.

        A diagnostic for leak checks (D07): it assumes small integer handles, as SoftHSM and most
        modules hand out. Call with :attr:`lock` held.
        """
        if not self.can_probe:
            return None
        return sum(1 for h in range(1, max_handle + 1) if self.session_state(h) is not None)

    def reinitialize(self) -> None:
        """``C_Finalize`` (errors ignored: it may already be finalised) + ``C_Initialize``."""
        with contextlib.suppress(pkcs11.PKCS11Error):
            self.lib.finalize()
        self.lib.initialize()
        self.generation += 1
        self.pid = os.getpid()

    @property
    def stale(self) -> bool:
        """True in a forked child until :meth:`adopt` re-initialises the module there (D12)."""
        return self.pid != os.getpid()

    def adopt(self) -> bool:
        """Re-initialise the module in this process if it was initialised by a parent (D12).

        Idempotent; True if it re-initialised. Call with :attr:`lock` held. Every session and
        object handle of the parent is invalid afterwards (:attr:`generation` changes) and the
        parent's login does not carry over.
        """
        if not self.stale:
            return False
        parent = self.pid
        self._logins.clear()
        self.reinitialize()  # raises pkcs11.PKCS11Error if C_Initialize fails: retried next call
        self.adoptions += 1
        log.info("PKCS#11 module re-initialised after a fork (parent pid %d)", parent)
        return True

    def _after_fork_in_child(self) -> None:
        # Only this thread exists in the child: the parent's lock may be held for ever.
        self.lock = threading.RLock()
        self._logins.clear()
        self.adoptions = 0


_CACHE: dict[str, LoadedLibrary] = {}
_CACHE_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """Fresh locks for the child (D12); the C_Initialize itself happens lazily, on first use."""
    global _CACHE_LOCK  # noqa: PLW0603 - the one process-wide cache, reset in a forked child
    _CACHE_LOCK = threading.Lock()
    for loaded in _CACHE.values():
        loaded._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_module_path() -> str:
    for candidate in DEFAULT_MODULES:
        if os.path.exists(candidate):
            return candidate
    raise ConfigError(
        "no PKCS#11 module given and SoftHSM2 is not installed at " + " or ".join(DEFAULT_MODULES)
    )


def load(module_path: str) -> LoadedLibrary:
    """The process-wide :class:`LoadedLibrary` for ``module_path`` (loaded on first use)."""
    real = os.path.realpath(module_path)
    with _CACHE_LOCK:
        loaded = _CACHE.get(real)
        if loaded is not None:
            return loaded
        if not os.path.isfile(real):
            raise ConfigError(f"PKCS#11 module {module_path} does not exist")
        try:
            lib = pkcs11.lib(real)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
            hint = module_load_hint(real)
            raise ConfigError(
                f"PKCS#11 module {module_path} could not be loaded" + (f": {hint}" if hint else "")
            ) from exc
        try:
            cdll: ctypes.CDLL | None = ctypes.CDLL(real)
        except OSError:
            cdll = None
        loaded = LoadedLibrary(path=real, lib=lib, lock=threading.RLock(), _cdll=cdll)
        _CACHE[real] = loaded
        return loaded
