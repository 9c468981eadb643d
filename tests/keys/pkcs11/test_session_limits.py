"""TEST-CATALOGUE D07: a burst cannot pile up unbounded waiters or sessions.

- Waiters on the module lock give up after ``lock_timeout`` with the retryable ``HsmBusy``.
- A burst of 10x more concurrent sign requests than worker threads: every request either returns
  a signature that verifies or fails with a retryable error.
- The open-session count (``C_GetSessionInfo`` over the handles, printed) is back to its baseline
  after 10^4 sequential signatures and after recovery cycles: no session leak.
"""

from __future__ import annotations

import ctypes
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from pkcs11 import Mechanism, ObjectClass

from broker.errors import BrokerError, HsmBusy
from broker.keys.health import HsmHealth
from broker.keys.pkcs11 import Pkcs11KeyStore, Pkcs11Signer
from tests.conftest import SoftHsmEnv
from tests.keys.helpers import verify_es256_raw

pytestmark = pytest.mark.softhsm

HANG_GUARD_S = 60.0  # turns a deadlock into a failure; never asserted on
WORKERS = 4  # HsmHealth's worker pool size
BURST = 10 * WORKERS


class CK_MECHANISM(ctypes.Structure):
    _fields_ = [
        ("mechanism", ctypes.c_ulong),
        ("parameter", ctypes.c_void_p),
        ("parameter_len", ctypes.c_ulong),
    ]


def _store(env: SoftHsmEnv, **kwargs: object) -> Pkcs11KeyStore:
    return Pkcs11KeyStore(env.module_path, env.token_label, env.pin, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def label(softhsm_env: SoftHsmEnv) -> Iterator[str]:
    name = f"sess-{uuid.uuid4().hex[:12]}"
    with _store(softhsm_env) as owner:
        owner.generate(name, b"\x07")
        yield name
        owner.delete(name)


def _sign_all(signer: Pkcs11Signer, requests: int) -> list[bytes | BaseException]:
    """``requests`` concurrent sign calls, each from its own thread."""
    start = threading.Barrier(requests)

    def one(i: int) -> bytes | BaseException:
        start.wait(HANG_GUARD_S)
        try:
            return signer.sign(f"burst-{i}".encode())
        except BaseException as exc:  # collected and checked by the test
            return exc

    with ThreadPoolExecutor(requests) as pool:
        return list(pool.map(one, range(requests)))


def test_d07_waiters_on_a_held_lock_give_up_with_a_retryable_error(
    softhsm_env: SoftHsmEnv, label: str
) -> None:
    with _store(softhsm_env, lock_timeout=0.05) as store:
        signer = store.signer(label)
        assert verify_es256_raw(signer.kid, b"warm", signer.sign(b"warm"))
        with store.session.lib.lock:  # the HSM is "stuck" for as long as this test holds the lock
            results = _sign_all(signer, BURST)
            still_held = store.session.lib.lock._is_owned()  # type: ignore[attr-defined]
        assert still_held  # every waiter returned while the lock was still held
        assert all(isinstance(r, HsmBusy) for r in results), results
        assert all(isinstance(r, BrokerError) and r.retryable for r in results)
        assert verify_es256_raw(signer.kid, b"after", signer.sign(b"after"))


def test_d07_health_bounds_waiters_by_the_sign_timeout(softhsm_env: SoftHsmEnv, label: str) -> None:
    health = HsmHealth(op_timeout=0.05)
    with _store(softhsm_env, health=health) as store:
        assert store.session.lock_timeout == 0.05  # the lock wait follows the health's op_timeout
        signer = store.signer(label)
        with store.session.lib.lock:
            results = _sign_all(signer, BURST)
        assert all(isinstance(r, BrokerError) and r.retryable for r in results), results
        assert verify_es256_raw(signer.kid, b"after", signer.sign(b"after"))


def test_d07_burst_ten_times_the_workers_completes_or_fails_retryably(
    softhsm_env: SoftHsmEnv, label: str
) -> None:
    health = HsmHealth(op_timeout=HANG_GUARD_S)
    with _store(softhsm_env, health=health) as store:
        signer = store.signer(label)
        signer.sign(b"warm")
        baseline = store.session.count_open_sessions()
        opened = store.session.sessions_opened
        results: list[bytes | BaseException] = []
        for _ in range(5):
            results += _sign_all(signer, BURST)
        after = store.session.count_open_sessions()
        print(f"\nD07 burst: {len(results)} requests, open sessions {baseline} -> {after}")
        signatures = [r for r in results if isinstance(r, bytes)]
        failures = [r for r in results if not isinstance(r, bytes)]
        assert all(isinstance(f, BrokerError) and f.retryable for f in failures), failures
        assert signatures
        assert all(
            verify_es256_raw(signer.kid, f"burst-{i % BURST}".encode(), r)
            for i, r in enumerate(results)
            if isinstance(r, bytes)
        )
        assert after == baseline
        assert store.session.sessions_opened == opened  # one session for the whole burst
        assert store.session.open_sessions == 1


def test_d07_no_session_leak_after_ten_thousand_sequential_signs(
    softhsm_env: SoftHsmEnv, label: str
) -> None:
    with _store(softhsm_env) as store:
        signer = store.signer(label)
        signer.sign(b"warm")
        baseline = store.session.count_open_sessions()
        opened = store.session.sessions_opened
        last = b""
        for i in range(10_000):
            last = signer.sign(i.to_bytes(4, "big"))
        after = store.session.count_open_sessions()
        print(f"\nD07 10^4 signs: open sessions {baseline} -> {after}")
        assert verify_es256_raw(signer.kid, (9_999).to_bytes(4, "big"), last)
        assert baseline is not None
        assert after == baseline
        assert store.session.sessions_opened == opened
        assert store.session.open_sessions == 1


def _break_session(store: Pkcs11KeyStore, label: str, how: str) -> None:
    cdll = ctypes.CDLL(store.module_path)
    handle = ctypes.c_ulong(store.session.current.handle)
    if how == "closed":
        assert cdll.C_CloseSession(handle) == 0
    elif how == "logged_out":
        assert cdll.C_Logout(handle) == 0
    elif how == "operation_active":
        key = store.session.handles[(ObjectClass.PRIVATE_KEY, label)].handle
        mech = CK_MECHANISM(int(Mechanism.ECDSA), None, 0)
        assert cdll.C_SignInit(handle, ctypes.byref(mech), ctypes.c_ulong(key)) == 0
    elif how == "reinitialised":
        store.session.lib.lib.reinitialize()
    elif how == "probe":
        store.probe()
    else:  # pragma: no cover - a typo in the test table
        raise AssertionError(how)


CYCLE = ("closed", "logged_out", "operation_active", "reinitialised", "probe")


def test_d07_no_session_leak_after_recovery_cycles(softhsm_env: SoftHsmEnv, label: str) -> None:
    with _store(softhsm_env) as store:
        signer = store.signer(label)
        # Start from a library only this store uses: other stores' sessions die with it.
        store.probe()
        signer.sign(b"warm")
        baseline = store.session.count_open_sessions()
        assert baseline == 1 == store.session.open_sessions
        recoveries = store.session.recoveries
        for round_ in range(20):
            for how in CYCLE:
                _break_session(store, label, how)
                message = f"{round_}-{how}".encode()
                assert verify_es256_raw(signer.kid, message, signer.sign(message)), how
        after = store.session.count_open_sessions()
        print(
            f"\nD07 recovery: {20 * len(CYCLE)} breaks, {store.session.recoveries - recoveries} "
            f"recoveries, sessions opened {store.session.sessions_opened} closed {store.session.sessions_closed} "
            f"abandoned {store.session.sessions_abandoned}, open sessions {baseline} -> {after}"
        )
        assert store.session.recoveries - recoveries >= 20 * 4  # every break but probe needs one
        assert after == baseline
        assert store.session.open_sessions == 1
    with _store(softhsm_env) as probe_store:  # and closing gives every session back
        assert probe_store.session.count_open_sessions() == 1  # only probe_store's own
