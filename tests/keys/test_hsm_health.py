# ruff: noqa: PLR0917  (pytest injects fixtures as positional parameters)
"""TEST-CATALOGUE D02, D03, D08, F08: HSM busy retries, per-operation timeout, the single DOWN
state with fail-fast and a background probe, and gRPC health following the HSM.

Every test makes its own :class:`Pkcs11KeyStore` with its own key labels on the session's SoftHSM
token; faults are injected by wrapping the store's python-pkcs11 objects (sessions, key handles,
login). Probe backoff and busy backoff run on injected wait/sleep functions: no real sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import random
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.app.hsm import HsmServingReporter
from broker.backoff import BackoffPolicy
from broker.errors import HsmUnavailable, InvalidArgument, KeyStoreError, PinIncorrect
from broker.jose import sign_compact_async
from broker.keys.api import Signer
from broker.keys.health import PROBE_BACKOFF, HsmHealth, HsmState
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.oauth.types import TokenSet
from broker.server.app import SERVICE_NAME
from broker.tokens.broker import TokenBroker
from broker.tokens.settings import Seams
from broker.tokens.stores.memory import MemoryGrantStore
from tests.clock import FakeClock
from tests.conftest import SoftHsmEnv
from tests.keys.helpers import verify_es256_raw
from tests.server.conftest import make_harness
from tests.tokens.fakes import token_set

HANG_GUARD_S = 30.0  # turns a deadlock into a failure; never asserted on

pytestmark = pytest.mark.softhsm


# --- helpers -------------------------------------------------------------------------------------


class Steps:
    """An injected probe wait: records each delay and blocks until the test releases one step."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._go = threading.Semaphore(0)
        self._stop = threading.Event()

    def wait(self, delay: float) -> bool:
        self.delays.append(delay)
        self._go.acquire()
        return self._stop.is_set()

    def release(self) -> None:
        self._go.release()

    def stop(self) -> None:
        self._stop.set()
        self._go.release()


class Probes:
    """Wraps the store's probe so the test learns each probe's outcome."""

    def __init__(self, health: HsmHealth, store: Pkcs11KeyStore) -> None:
        self.outcomes: queue.Queue[str] = queue.Queue()
        self._store = store
        health.bind(self._probe)

    def _probe(self) -> None:
        try:
            self._store.probe()
        except KeyStoreError as exc:
            self.outcomes.put(exc.reason)
            raise
        self.outcomes.put("up")

    def next(self) -> str:
        return self.outcomes.get(timeout=HANG_GUARD_S)


class Transitions:
    """A health listener: every state change, in order, and a way to wait for the next one."""

    def __init__(self, health: HsmHealth) -> None:
        self.seen: list[HsmState] = []
        self._queue: queue.Queue[HsmState] = queue.Queue()
        health.add_listener(self._on_change)

    def _on_change(self, state: HsmState) -> None:
        self.seen.append(state)
        self._queue.put(state)

    def next(self) -> HsmState:
        return self._queue.get(timeout=HANG_GUARD_S)


class Failing:
    """A private-key handle whose sign raises ``klass`` ``times`` times, then delegates."""

    def __init__(self, real: Any, klass: type[p11e.PKCS11Error], times: int) -> None:
        self.real = real
        self.klass = klass
        self.left = times
        self.calls = 0

    def sign(self, data: bytes, **kwargs: Any) -> bytes:
        self.calls += 1
        if self.left != 0:
            self.left -= 1
            raise self.klass()
        return bytes(self.real.sign(data, **kwargs))


def make_store(
    env: SoftHsmEnv, health: HsmHealth, token_label: str | None = None
) -> Pkcs11KeyStore:
    return Pkcs11KeyStore(env.module_path, token_label or env.token_label, env.pin, health=health)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def steps() -> Iterator[Steps]:
    s = Steps()
    yield s
    s.stop()


@pytest.fixture
def health(sleeps: list[float], steps: Steps) -> HsmHealth:
    return HsmHealth(clock=FakeClock(), sleep=sleeps.append, wait=steps.wait, op_timeout=None)


@pytest.fixture
def store(
    softhsm_env: SoftHsmEnv, hsm_store: Pkcs11KeyStore, health: HsmHealth
) -> Iterator[Pkcs11KeyStore]:
    # hsm_store first: this process is logged in already, so closing ours logs nobody out.
    s = make_store(softhsm_env, health)
    yield s
    s.close()


@pytest.fixture
def key(store: Pkcs11KeyStore) -> Iterator[str]:
    label = f"health-{uuid.uuid4().hex[:10]}"
    store.generate(label, b"\x0d")
    yield label
    if store.health is None or store.health.state is HsmState.UP:
        store.delete(label)


def inject_sign(
    store: Pkcs11KeyStore, monkeypatch: pytest.MonkeyPatch, make: Callable[[Any], Any]
) -> list[Any]:
    """Wrap every private-key handle the store finds; returns the wrappers made."""
    real = store.session.private_ec
    made: list[Any] = []

    def private_ec(session: Any, label: str) -> Any:
        wrapper = make(real(session, label))
        made.append(wrapper)
        return wrapper

    monkeypatch.setattr(store.session, "private_ec", private_ec)
    return made


# --- backoff values ------------------------------------------------------------------------------


def test_d02_probe_backoff_is_2s_times_1_5_capped_at_30s() -> None:
    delays = PROBE_BACKOFF.delays()
    got = [next(delays) for _ in range(10)]
    assert got[:4] == [2.0, 3.0, 4.5, 6.75]
    assert got[-3:] == [30.0, 30.0, 30.0]
    assert all(a <= b for a, b in itertools.pairwise(got))


@pytest.mark.parametrize(
    ("initial", "factor", "maximum"), [(-1.0, 2.0, 1.0), (1.0, 0.5, 2.0), (2.0, 2.0, 1.0)]
)
def test_bad_backoff_and_health_settings_are_invalid_argument(
    initial: float, factor: float, maximum: float
) -> None:
    with pytest.raises(InvalidArgument):
        BackoffPolicy(initial=initial, factor=factor, maximum=maximum)


def test_a_zero_hsm_backoff_is_invalid_argument() -> None:
    """A zero delay would spin the probe thread (the shared rule allows 0 for other users)."""
    with pytest.raises(InvalidArgument):
        HsmHealth(probe_backoff=BackoffPolicy(initial=0.0, factor=1.5, maximum=30.0))
    with pytest.raises(InvalidArgument):
        HsmHealth(busy_backoff=BackoffPolicy(initial=0.0, maximum=1.0))


def test_bad_health_settings_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        HsmHealth(busy_retries=-1)
    with pytest.raises(InvalidArgument):
        HsmHealth(op_timeout=0)


# --- D08: busy device ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "klass",
    [p11e.FunctionFailed, p11e.OperationActive, p11e.SessionCount],
    ids=lambda k: k.__name__,
)
def test_d08_busy_error_is_retried_with_backoff_then_signs(
    store: Pkcs11KeyStore,
    key: str,
    klass: type[p11e.PKCS11Error],
    sleeps: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signer = store.signer(key)
    left = {"n": 2}

    def make(real: Any) -> Failing:
        f = Failing(real, klass, min(left["n"], 1))
        left["n"] -= f.left
        return f

    made = inject_sign(store, monkeypatch, make)
    signature = signer.sign(b"d08")
    assert verify_es256_raw(signer.kid, b"d08", signature)
    assert sleeps == [0.05, 0.1]
    assert sum(f.calls for f in made) == 3
    assert store.health is not None and store.health.state is HsmState.UP


@pytest.mark.parametrize(
    "klass",
    [p11e.FunctionFailed, p11e.OperationActive, p11e.SessionCount],
    ids=lambda k: k.__name__,
)
def test_d08_busy_three_retries_then_hsm_unavailable_and_still_up(
    store: Pkcs11KeyStore,
    key: str,
    klass: type[p11e.PKCS11Error],
    sleeps: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signer = store.signer(key)
    made = inject_sign(store, monkeypatch, lambda real: Failing(real, klass, -1))
    with pytest.raises(HsmUnavailable) as info:
        signer.sign(b"d08")
    assert info.value.retryable
    assert "busy after 3 retries" in str(info.value)
    assert isinstance(info.value.__cause__, klass)
    assert sleeps == [0.05, 0.1, 0.2]
    assert sum(f.calls for f in made) == 4  # first try + 3 retries, never more
    assert store.health is not None and store.health.state is HsmState.UP
    monkeypatch.undo()
    assert verify_es256_raw(signer.kid, b"after", signer.sign(b"after"))


def test_d08_operation_active_never_reuses_the_session(
    store: Pkcs11KeyStore, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = store.signer(key)
    sessions: list[int] = []
    real = store.session.private_ec

    def private_ec(session: Any, label: str) -> Any:
        sessions.append(session.handle)
        return Failing(real(session, label), p11e.OperationActive, 1 if len(sessions) == 1 else 0)

    monkeypatch.setattr(store.session, "private_ec", private_ec)
    signer.sign(b"d06")
    assert len(sessions) == 2 and sessions[0] != sessions[1]


def test_d08_sign_slower_than_the_bound_fails_hsm_unavailable(
    softhsm_env: SoftHsmEnv, hsm_store: Pkcs11KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    health = HsmHealth(op_timeout=0.2)
    store = make_store(softhsm_env, health)
    label = f"slow-{uuid.uuid4().hex[:10]}"
    store.generate(label, b"\x5e")
    signer = store.signer(label)
    gate = threading.Event()
    entered = threading.Event()

    class Slow:
        def __init__(self, real: Any) -> None:
            self.real = real

        def sign(self, data: bytes, **kwargs: Any) -> bytes:
            entered.set()
            gate.wait(HANG_GUARD_S)
            return bytes(self.real.sign(data, **kwargs))

    try:
        inject_sign(store, monkeypatch, Slow)
        with pytest.raises(HsmUnavailable, match=r"took longer than 0\.2 s"):
            signer.sign(b"slow")
        assert entered.is_set()
        assert health.state is HsmState.UP  # slow is not down
        gate.set()
        monkeypatch.undo()
        assert verify_es256_raw(signer.kid, b"fast", signer.sign(b"fast"))
    finally:
        gate.set()
        store.delete(label)
        store.close()


# --- D02: device failure, DOWN, fail fast, probe ----------------------------------------------------


def test_d02_failed_recovery_goes_down_fails_fast_and_the_probe_recovers(
    store: Pkcs11KeyStore,
    key: str,
    health: HsmHealth,
    steps: Steps,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="broker.keys.health")
    signer = store.signer(key)
    probes = Probes(health, store)
    changes = Transitions(health)
    unplugged = {"on": True}
    real_login = store.session.login
    logins: list[object] = []

    def login(token: Any) -> Any:
        logins.append(token)
        if unplugged["on"]:
            raise p11e.DeviceError()
        return real_login(token)

    monkeypatch.setattr(store.session, "login", login)
    made = inject_sign(
        store,
        monkeypatch,
        lambda real: Failing(real, p11e.DeviceError, 1 if unplugged["on"] else 0),
    )
    with pytest.raises(HsmUnavailable) as info:
        signer.sign(b"d02")
    assert info.value.retryable
    assert health.state is HsmState.DOWN and changes.next() is HsmState.DOWN
    assert health.last_error == "HsmUnavailable"
    device_calls = (len(logins), sum(f.calls for f in made))

    # DOWN: every call fails fast, without a device call; the first error was logged once.
    for _ in range(5):
        with pytest.raises(HsmUnavailable, match="HSM is down"):
            signer.sign(b"fast")
    with pytest.raises(HsmUnavailable):
        store.get(key)
    assert (len(logins), sum(f.calls for f in made)) == device_calls
    assert health.fast_failures == 6
    downs = [r for r in caplog.records if r.getMessage().startswith("HSM down")]
    assert len(downs) == 1

    # Two failed probes (device still gone), then it comes back.
    steps.release()
    assert probes.next() == "hsm_unavailable"
    steps.release()
    assert probes.next() == "hsm_unavailable"
    assert health.state is HsmState.DOWN
    unplugged["on"] = False
    steps.release()
    assert probes.next() == "up"
    assert changes.next() is HsmState.UP
    assert changes.seen == [HsmState.DOWN, HsmState.UP]
    assert health.state.value == "up"
    assert steps.delays == [2.0, 3.0, 4.5]
    assert health.probes == 3 and health.downs == 1
    assert verify_es256_raw(signer.kid, b"back", signer.sign(b"back"))


def test_d02_down_only_once_for_concurrent_failures_and_close_stops_the_probe(
    softhsm_env: SoftHsmEnv, hsm_store: Pkcs11KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = Steps()
    health = HsmHealth(clock=FakeClock(), sleep=lambda _: None, wait=steps.wait, op_timeout=None)
    store = make_store(softhsm_env, health)
    label = f"down-{uuid.uuid4().hex[:10]}"
    store.generate(label, b"\x02")
    signer = store.signer(label)
    changes: list[HsmState] = []
    health.add_listener(changes.append)
    monkeypatch.setattr(
        store.session, "login", lambda token: (_ for _ in ()).throw(p11e.DeviceError())
    )
    inject_sign(store, monkeypatch, lambda real: Failing(real, p11e.DeviceError, -1))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            signer.sign(b"x")
        except HsmUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD_S)
    assert len(errors) == 8
    assert changes == [HsmState.DOWN] and health.downs == 1
    monkeypatch.undo()
    steps.stop()  # the probe's wait returns "stopped": close must not hang on it
    store.close()
    assert health.state is HsmState.DOWN  # closed while down: no probe ran
    assert health.probes == 0
    with pytest.raises(KeyStoreError, match="closed"):
        store.probe()
    # Clean up the key with the shared store.
    hsm_store.delete(label)


def test_d05_pin_error_in_recovery_is_permanent_not_down(
    store: Pkcs11KeyStore, key: str, health: HsmHealth, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = store.signer(key)
    monkeypatch.setattr(
        store.session, "login", lambda token: (_ for _ in ()).throw(p11e.PinIncorrect())
    )
    inject_sign(store, monkeypatch, lambda real: Failing(real, p11e.SessionHandleInvalid, 1))
    with pytest.raises(PinIncorrect):
        signer.sign(b"pin")
    assert health.state is HsmState.UP
    monkeypatch.undo()
    assert len(signer.sign(b"ok")) == 64


# --- D03: the token leaves and comes back (a real second SoftHSM token) -----------------------------


def _init_token(env: SoftHsmEnv, label: str) -> None:
    so_pin = env.so_pin_file.read_text().strip()
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            so_pin,
            "--pin",
            env.pin,
        ],
        check=True,
        capture_output=True,
        env={"SOFTHSM2_CONF": str(env.conf_path), "PATH": "/usr/bin:/bin"},
    )


def _token_dir(env: SoftHsmEnv, before: set[Path]) -> Path:
    (new,) = set(env.tokens_dir.iterdir()) - before
    return new


def test_d03_token_removed_goes_down_and_is_found_by_label_when_it_returns(
    softhsm_env: SoftHsmEnv,
    hsm_store: Pkcs11KeyStore,
    steps: Steps,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    label = f"d03-{uuid.uuid4().hex[:8]}"
    before = set(softhsm_env.tokens_dir.iterdir())
    _init_token(softhsm_env, label)
    token_dir = _token_dir(softhsm_env, before)
    parked = tmp_path / "parked"
    health = HsmHealth(clock=FakeClock(), sleep=lambda _: None, wait=steps.wait, op_timeout=None)
    hsm_store.list()  # the shared token's login survives the re-initialisations below
    # The library must see the new token: the store's own probe re-initialises and re-finds.
    hsm_store.session.lib.reinitialize()
    store = make_store(softhsm_env, health, token_label=label)
    try:
        store.generate("client", b"\x03")
        signer = store.signer("client")
        probes = Probes(health, store)
        changes = Transitions(health)
        slot_before = store.session.token.slot.slot_id

        shutil.move(str(token_dir), parked)  # the token leaves
        # The device answers TOKEN_NOT_PRESENT on every call while the token is away.
        inject_sign(store, monkeypatch, lambda real: Failing(real, p11e.TokenNotPresent, -1))
        with pytest.raises(HsmUnavailable) as info:
            signer.sign(b"gone")
        assert info.value.retryable
        assert changes.next() is HsmState.DOWN
        monkeypatch.undo()
        with pytest.raises(HsmUnavailable, match="HSM is down"):
            signer.sign(b"fast")

        steps.release()
        assert probes.next() == "token_not_present"  # still gone: found by label, not by slot
        shutil.move(str(parked), token_dir)  # it comes back
        steps.release()
        assert probes.next() == "up"
        assert changes.next() is HsmState.UP
        assert verify_es256_raw(signer.kid, b"back", signer.sign(b"back"))
        assert store.session.token.label == label
        assert isinstance(slot_before, int)
    finally:
        if parked.exists():
            shutil.move(str(parked), token_dir)
        steps.stop()
        store.close()
        shutil.rmtree(token_dir, ignore_errors=True)
        with hsm_store.session.lock:
            hsm_store.session.lib.reinitialize()  # forget the removed token; other stores re-open


# --- F08: gRPC health follows the HSM; warm-cache tokens are still served ---------------------------


class SigningRefresher:
    """A refresher that signs a client assertion in the HSM first, as the OAuth client does."""

    def __init__(self, signer: Signer, clock: FakeClock) -> None:
        self.signer = signer
        self.clock = clock
        self.calls = 0

    async def refresh(self, refresh_token: str, *, subject: str) -> TokenSet:
        self.calls += 1
        await sign_compact_async(self.signer, {"iss": self.signer.kid, "jti": str(self.calls)})
        return token_set(self.clock)


async def _health_status(stub: Any, service: str) -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return int(reply.status)


async def test_f08_not_serving_while_hsm_down_warm_cache_still_served(
    store: Pkcs11KeyStore,
    key: str,
    health: HsmHealth,
    steps: Steps,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    signer = store.signer(key)
    probes = Probes(health, store)
    clock = FakeClock()
    refresher = SigningRefresher(signer, clock)
    grants = MemoryGrantStore(clock)
    broker = TokenBroker(grants, refresher, clock, seams=Seams(rng=random.Random(5)))
    warm = await broker.add_grant(
        token_set(clock), label="warm", issuer="https://as.example", client_id=signer.kid
    )
    cold = await broker.add_grant(
        token_set(clock, lifetime=1.0), label="cold", issuer="https://as.example", client_id="x"
    )
    h, provider = await make_harness(tmp_path)
    reporter = HsmServingReporter(health, h.running)
    reporter.start()
    client = h.ca.issue(uris=("spiffe://corp.example/app",))
    hstub = health_pb2_grpc.HealthStub(h.channel(client))
    try:
        assert await _health_status(hstub, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING

        # The device fails and its recovery fails: DOWN.
        monkeypatch.setattr(
            store.session, "login", lambda token: (_ for _ in ()).throw(p11e.DeviceError())
        )
        inject_sign(store, monkeypatch, lambda real: Failing(real, p11e.DeviceError, -1))
        with pytest.raises(HsmUnavailable):
            await sign_compact_async(signer, {"probe": 1})
        assert health.state is HsmState.DOWN
        async with asyncio.timeout(HANG_GUARD_S):
            while reporter.applied != [HsmState.DOWN]:
                await asyncio.sleep(0.01)
        for service in ("", SERVICE_NAME):
            assert await _health_status(hstub, service) == (
                health_pb2.HealthCheckResponse.NOT_SERVING
            )

        # Warm cache: served without signing. Cold: needs a signature, fails fast, retryable.
        token = await broker.get_access_token(warm.grant_id)
        assert token.access_token == "at-0"
        with pytest.raises(HsmUnavailable) as info:
            await broker.get_access_token(cold.grant_id, min_ttl=60)
        assert info.value.retryable
        assert refresher.calls == 1

        # The device is back; the probe recovers it: SERVING again, cold path works.
        monkeypatch.undo()
        steps.release()
        assert await asyncio.to_thread(probes.next) == "up"
        async with asyncio.timeout(HANG_GUARD_S):
            while reporter.applied != [HsmState.DOWN, HsmState.UP]:
                await asyncio.sleep(0.01)
        assert await _health_status(hstub, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        clock.advance(300)  # past the token core's retry backoff for the failed refresh
        refreshed = await broker.get_access_token(cold.grant_id, min_ttl=60)
        assert refreshed.expires_at > clock.now() + 60
        assert refresher.calls == 2
    finally:
        await reporter.stop()
        for ch in h.channels:
            await ch.close()
        await h.running.stop(None)
        provider.shutdown()
        await broker.stop()
        await grants.close()
