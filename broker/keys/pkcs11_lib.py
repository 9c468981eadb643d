"""The process-wide PKCS#11 library cache: the one piece of module-level mutable state.

python-pkcs11 0.10 calls ``C_Initialize(NULL)``, i.e. without ``CKF_OS_LOCKING_OK``, and
releases the GIL around every call: SoftHSM then runs without locks and two threads inside it at
once crash the process. So each loaded module gets exactly one :class:`LoadedLibrary` with one
lock, and every PKCS#11 call of every store on that module runs under that lock.

``C_GetSessionInfo`` (the session health check of D01/D04) is not exposed by python-pkcs11; it is
called through ``ctypes`` on the same, already loaded shared object.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pkcs11

from broker.errors import ConfigError

DEFAULT_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
)

CKS_RO_USER_FUNCTIONS = 1
CKS_RW_USER_FUNCTIONS = 3
CKR_OK = 0


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

    def reinitialize(self) -> None:
        """``C_Finalize`` (errors ignored: it may already be finalised) + ``C_Initialize``."""
        with contextlib.suppress(pkcs11.PKCS11Error):
            self.lib.finalize()
        self.lib.initialize()
        self.generation += 1


_CACHE: dict[str, LoadedLibrary] = {}
_CACHE_LOCK = threading.Lock()


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
            raise ConfigError(f"PKCS#11 module {module_path} could not be loaded") from exc
        try:
            cdll: ctypes.CDLL | None = ctypes.CDLL(real)
        except OSError:
            cdll = None
        loaded = LoadedLibrary(path=real, lib=lib, lock=threading.RLock(), _cdll=cdll)
        _CACHE[real] = loaded
        return loaded
