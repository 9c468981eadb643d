"""TEST-CATALOGUE D12: a process forked after ``C_Initialize`` (multiprocessing "fork", gunicorn
style) never uses its parent's PKCS#11 state: the child re-initialises the module, logs in and
re-finds its keys on first use, while the parent keeps signing on its own session.

Every signature (parent and child) is verified in the parent with ``cryptography`` and the
did:key-derived public key. Children report through a multiprocessing queue and must exit 0.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import queue
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from broker.keys.pkcs11 import Pkcs11KeyStore, Pkcs11Signer
from tests.conftest import SoftHsmEnv
from tests.keys.helpers import verify_es256_raw

pytestmark = pytest.mark.softhsm

HANG_GUARD_S = 60.0  # turns a deadlock into a failure; never asserted on
THREADS = 8
SIGNS_PER_THREAD = 40

FORK = multiprocessing.get_context("fork")
Report = dict[str, Any]


@pytest.fixture
def store(softhsm_env: SoftHsmEnv) -> Iterator[Pkcs11KeyStore]:
    s = Pkcs11KeyStore(softhsm_env.module_path, softhsm_env.token_label, softhsm_env.pin)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def signer(store: Pkcs11KeyStore) -> Iterator[Pkcs11Signer]:
    label = f"fork-{uuid.uuid4().hex[:12]}"
    store.generate(label, b"\x12")
    try:
        yield store.signer(label)
    finally:
        store.delete(label)


def _sign_many(signer: Pkcs11Signer, tag: str) -> list[tuple[bytes, bytes]]:
    """``THREADS`` threads x ``SIGNS_PER_THREAD`` signatures; (message, signature) pairs."""

    def one_thread(t: int) -> list[tuple[bytes, bytes]]:
        out = []
        for i in range(SIGNS_PER_THREAD):
            message = f"{tag}-{t}-{i}".encode()
            out.append((message, signer.sign(message)))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        return [pair for chunk in pool.map(one_thread, range(THREADS)) for pair in chunk]


def _child_signs(
    store: Pkcs11KeyStore,
    signer: Pkcs11Signer,
    out: multiprocessing.Queue[Report],
    start: multiprocessing.synchronize.Event,
) -> None:
    """Runs in the forked child: sign from several threads, report, close (exit 0 if no error)."""
    lib = store.session.lib
    report: Report = {
        "stale_at_start": lib.stale,
        "generation_at_start": lib.generation,
        "did": store.get(signer.label).did,  # the first call: adopts the module (D12)
        "adoptions": lib.adoptions,
    }
    start.wait(HANG_GUARD_S)
    report["pairs"] = _sign_many(signer, "child")
    report["generation_after"] = lib.generation
    report["opened"] = store.session.sessions_opened
    report["abandoned"] = store.session.sessions_abandoned
    report["open_sessions"] = store.session.open_sessions
    store.close()
    out.put(report)


def _run_child(target: Any, *args: Any) -> tuple[multiprocessing.process.BaseProcess, Any]:
    results: multiprocessing.Queue[Report] = FORK.Queue()
    process = FORK.Process(target=target, args=(*args, results))
    process.start()
    return process, results


def test_d12_fork_child_reinitialises_and_signs_concurrently_with_parent(
    store: Pkcs11KeyStore, signer: Pkcs11Signer
) -> None:
    assert verify_es256_raw(signer.kid, b"before fork", signer.sign(b"before fork"))
    parent_generation = store.session.lib.generation
    parent_opened = store.session.sessions_opened
    start = FORK.Event()
    results: multiprocessing.Queue[Report] = FORK.Queue()
    child = FORK.Process(target=_child_signs, args=(store, signer, results, start), daemon=True)
    child.start()
    try:
        start.set()  # both sides sign from THREADS threads at the same time
        parent_pairs = _sign_many(signer, "parent")
        report = results.get(timeout=HANG_GUARD_S)
    finally:
        child.join(HANG_GUARD_S)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0

    # The child saw the parent's module, re-initialised it once and logged in on its own.
    assert report["stale_at_start"] is True
    assert report["adoptions"] == 1
    assert report["generation_after"] == report["generation_at_start"] + 1
    assert report["did"] == signer.kid
    assert report["abandoned"] == 1  # the parent's session: forgotten, not closed
    assert report["opened"] > parent_opened
    assert report["open_sessions"] == 1

    # The parent never noticed: same module generation, same session, no recovery.
    assert not store.session.lib.stale
    assert store.session.lib.generation == parent_generation
    assert store.session.sessions_opened == parent_opened
    assert store.session.open_sessions == 1

    pairs = parent_pairs + report["pairs"]
    assert len(pairs) == 2 * THREADS * SIGNS_PER_THREAD
    assert all(verify_es256_raw(signer.kid, m, s) for m, s in pairs)


def _child_signs_once(signer: Pkcs11Signer, out: multiprocessing.Queue[Report]) -> None:
    message = b"child while the parent's lock is held"
    out.put({"message": message, "signature": signer.sign(message)})


def test_d12_fork_while_a_parent_thread_holds_the_module_lock(
    store: Pkcs11KeyStore, signer: Pkcs11Signer
) -> None:
    """gunicorn-style: the fork happens while another thread is inside a PKCS#11 call. The
    child has only the forking thread; with the parent's lock it would wait for ever."""
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.session.lib.lock:
            held.set()
            release.wait(HANG_GUARD_S)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(HANG_GUARD_S)
        child, results = _run_child(_child_signs_once, signer)
        try:
            report = results.get(timeout=HANG_GUARD_S)
        except queue.Empty:
            pytest.fail("the forked child deadlocked on the parent's module lock")
        finally:
            child.join(HANG_GUARD_S)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0
        assert not release.is_set()  # the parent's lock was held the whole time
    finally:
        release.set()
        holder.join()
    assert verify_es256_raw(signer.kid, report["message"], report["signature"])
    assert verify_es256_raw(signer.kid, b"parent after", signer.sign(b"parent after"))


def _child_closes_unused(store: Pkcs11KeyStore, out: multiprocessing.Queue[Report]) -> None:
    store.close()
    out.put(
        {"closed": store.session.sessions_closed, "abandoned": store.session.sessions_abandoned}
    )


def test_d12_child_closing_an_unused_store_never_closes_the_parents_session(
    store: Pkcs11KeyStore, signer: Pkcs11Signer
) -> None:
    signer.sign(b"warm")
    recoveries = store.session.recoveries
    closed, abandoned = store.session.sessions_closed, store.session.sessions_abandoned
    child, results = _run_child(_child_closes_unused, store)
    report = results.get(timeout=HANG_GUARD_S)
    child.join(HANG_GUARD_S)
    assert child.exitcode == 0
    # No C_Logout / C_CloseSession on the parent's handle from the child.
    assert report == {"closed": closed, "abandoned": abandoned + 1}
    assert verify_es256_raw(signer.kid, b"parent", signer.sign(b"parent"))
    assert store.session.recoveries == recoveries


def test_d12_fork_of_a_fork_re_initialises_again(
    store: Pkcs11KeyStore, signer: Pkcs11Signer
) -> None:
    """A grandchild forked from a child that already re-initialised does it once more."""
    child, results = _run_child(_child_forks_again, store, signer)
    report = results.get(timeout=HANG_GUARD_S)
    child.join(HANG_GUARD_S)
    assert child.exitcode == 0
    assert report["grandchild_exit"] == 0
    assert report["child_adoptions"] == 1
    assert report["grandchild_adoptions"] == 1
    for who in ("child", "grandchild"):
        message, signature = report[who]
        assert verify_es256_raw(signer.kid, message, signature)


def _child_forks_again(
    store: Pkcs11KeyStore, signer: Pkcs11Signer, out: multiprocessing.Queue[Report]
) -> None:
    report: Report = {"child": (b"child", signer.sign(b"child"))}
    report["child_adoptions"] = store.session.lib.adoptions
    inner, inner_results = _run_child(_grandchild, store, signer)
    grand = inner_results.get(timeout=HANG_GUARD_S)
    inner.join(HANG_GUARD_S)
    report.update(grand)
    report["grandchild_exit"] = inner.exitcode
    out.put(report)


def _grandchild(
    store: Pkcs11KeyStore, signer: Pkcs11Signer, out: multiprocessing.Queue[Report]
) -> None:
    signature = signer.sign(b"grandchild")
    out.put(
        {
            "grandchild": (b"grandchild", signature),
            "grandchild_adoptions": store.session.lib.adoptions,
        }
    )


def test_d12_forked_child_signs_through_a_timed_hsm_health(softhsm_env: SoftHsmEnv) -> None:
    """The service's store has an HsmHealth whose worker pool bounds each sign: the child gets
    a pool (and lock) of its own instead of waiting on the parent's, which do not exist there."""
    from broker.keys.health import HsmHealth

    health = HsmHealth(op_timeout=20.0)
    store = Pkcs11KeyStore(
        softhsm_env.module_path, softhsm_env.token_label, softhsm_env.pin, health=health
    )
    label = f"fork-health-{uuid.uuid4().hex[:12]}"
    store.generate(label, b"\x13")
    try:
        signer = store.signer(label)
        assert verify_es256_raw(signer.kid, b"parent", signer.sign(b"parent"))  # pool started
        child, results = _run_child(_child_signs_once, signer)
        try:
            report = results.get(timeout=HANG_GUARD_S)
        except queue.Empty:
            pytest.fail("the forked child could not sign through its HsmHealth")
        finally:
            child.join(HANG_GUARD_S)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0
        assert verify_es256_raw(signer.kid, report["message"], report["signature"])
        assert verify_es256_raw(signer.kid, b"parent after", signer.sign(b"parent after"))
    finally:
        store.delete(label)
        health.stop()
        store.close()
