"""TEST-CATALOGUE D08 (per-operation bound) for :class:`Pkcs11Signer` used from async code.

An async signature makes exactly one thread hop: the whole JWS (its metrics, its span and its
``C_Sign``) runs on one worker of the health's bounded pool, and the bound still applies.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.errors import HsmUnavailable
from broker.jose import sign_compact_async
from broker.keys.health import HsmHealth, HsmState
from broker.keys.pkcs11.store import Pkcs11KeyStore
from broker.telemetry.metrics import BrokerMetrics
from broker.telemetry.signer import MeteredSigner
from tests.clock import FakeClock
from tests.conftest import SoftHsmEnv
from tests.keys.helpers import verify_jws_with_jwcrypto

pytestmark = pytest.mark.softhsm

HANG_GUARD_S = 30.0  # turns a deadlock into a failure; never asserted on


class ThreadClock(FakeClock):
    """A fake clock that notes the thread of every ``monotonic()`` (MeteredSigner reads it)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def monotonic(self) -> float:
        self.threads.append(threading.current_thread())
        return super().monotonic()


class RecordingKey:
    """Wraps a python-pkcs11 private key: notes the thread of each ``C_Sign``, may hold it."""

    def __init__(self, real: Any, threads: list[threading.Thread], gate: threading.Event) -> None:
        self.real = real
        self.threads = threads
        self.gate = gate
        self.entered = threading.Event()

    def sign(self, data: bytes, **kwargs: Any) -> bytes:
        self.threads.append(threading.current_thread())
        self.entered.set()
        self.gate.wait(HANG_GUARD_S)
        return bytes(self.real.sign(data, **kwargs))


@pytest.fixture
def store(softhsm_env: SoftHsmEnv) -> Iterator[Pkcs11KeyStore]:
    with Pkcs11KeyStore(
        softhsm_env.module_path,
        softhsm_env.token_label,
        softhsm_env.pin,
        health=HsmHealth(op_timeout=HANG_GUARD_S),
    ) as store:
        yield store


@pytest.fixture
def label(store: Pkcs11KeyStore) -> Iterator[str]:
    name = f"signer-{uuid.uuid4().hex[:10]}"
    store.generate(name, b"\x5a")
    yield name
    store.delete(name)


def _record_c_sign(
    store: Pkcs11KeyStore, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> tuple[list[threading.Thread], list[RecordingKey]]:
    real = store.session.private_ec
    threads: list[threading.Thread] = []
    keys: list[RecordingKey] = []

    def private_ec(session: Any, key_label: str) -> Any:
        keys.append(RecordingKey(real(session, key_label), threads, gate))
        return keys[-1]

    monkeypatch.setattr(store.session, "private_ec", private_ec)
    return threads, keys


async def test_d08_async_sign_makes_one_thread_hop_for_c_sign_and_metrics(
    store: Pkcs11KeyStore, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ThreadClock()
    provider = MeterProvider()
    signer = MeteredSigner(store.signer(label), BrokerMetrics(provider.get_meter("t")), clock)
    open_gate = threading.Event()
    open_gate.set()
    c_sign_threads, _ = _record_c_sign(store, monkeypatch, open_gate)
    token = await sign_compact_async(signer, {"iss": signer.kid, "jti": "one-hop"})
    assert verify_jws_with_jwcrypto(token, signer.kid)["jti"] == "one-hop"
    (worker,) = set(c_sign_threads)
    # The metrics' two clock reads and the C_Sign ran on the same thread: one hop, not two.
    assert set(clock.threads) == {worker}
    assert worker is not threading.current_thread()
    assert worker.name.startswith("hsm-op")
    provider.shutdown()


async def test_d08_async_sign_slower_than_the_bound_fails_hsm_unavailable(
    softhsm_env: SoftHsmEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    health = HsmHealth(op_timeout=0.2)
    gate = threading.Event()
    with Pkcs11KeyStore(
        softhsm_env.module_path, softhsm_env.token_label, softhsm_env.pin, health=health
    ) as store:
        label = f"slow-{uuid.uuid4().hex[:10]}"
        store.generate(label, b"\x5b")
        signer = store.signer(label)
        try:
            _, keys = _record_c_sign(store, monkeypatch, gate)
            with pytest.raises(HsmUnavailable, match=r"took longer than 0\.2 s"):
                await sign_compact_async(signer, {"slow": True})
            assert keys and keys[0].entered.is_set()
            assert health.state is HsmState.UP  # slow is not down
        finally:
            gate.set()
            monkeypatch.undo()
            store.delete(label)


async def test_async_sign_span_nests_under_the_callers_span(
    softhsm_env: SoftHsmEnv,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with Pkcs11KeyStore(
        softhsm_env.module_path,
        softhsm_env.token_label,
        softhsm_env.pin,
        tracer_provider=provider,
        health=HsmHealth(op_timeout=HANG_GUARD_S),
    ) as store:
        label = f"span-{uuid.uuid4().hex[:10]}"
        store.generate(label, b"\x5c")
        signer = store.signer(label)
        with provider.get_tracer("t").start_as_current_span("caller") as caller:
            await sign_compact_async(signer, {"spanned": True})
        store.delete(label)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    parent = spans["keys.sign"].parent
    assert parent is not None
    assert parent.span_id == caller.get_span_context().span_id


def test_bounded_on_its_own_worker_runs_inline() -> None:
    health = HsmHealth(op_timeout=HANG_GUARD_S)
    try:
        outer, inner = health.bounded(
            "outer",
            lambda: (
                threading.current_thread(),
                health.bounded("inner", threading.current_thread),
            ),
        )
        assert outer is inner
        assert outer.name.startswith("hsm-op")
        other = HsmHealth(op_timeout=HANG_GUARD_S)
        try:  # another health's worker is not this pool's: it still hops (and is bounded)
            assert health.bounded(
                "x", lambda: other.bounded("y", threading.current_thread)
            ) not in (
                outer,
                threading.current_thread(),
            )
        finally:
            other.stop()
    finally:
        health.stop()
