"""The broker's link to the verifier under network faults (catalogue A04, A06, A07, J04-lite):
a real ``broker serve``, the real oidc-provider peer, and a FaultProxy between them."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from broker.errors import AuthServerUnavailable
from broker.server.gen.broker.v1 import broker_pb2
from devtools.faultproxy import Toxics
from tests.chaos.rig import Call, Chaos, ChaosStacks, call, jwt_exp
from tests.stacks import get_token, grant_of, login

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.softhsm]

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
REFRESH = b"grant_type=refresh_token"
# 30 s access tokens: FRESH for ~10 s, then STALE (served, refreshed in the background), INVALID
# (a caller waits for a refresh) with 10 s left.
LIFETIME: dict[str, Any] = {
    "access_token_ttl": 30,
    "refresh_threshold": 20.0,
    "min_serve_ttl": 10.0,
}
PHASE_BOUND_S = 150.0  # a bound on every polling phase (never asserted on)


def poll(
    chaos: Chaos, grant_id: str, until: Callable[[Call], bool], *, pause: float = 0.25
) -> list[Call]:
    """GetAccessToken repeatedly until ``until(call)``; returns every call (the last included)."""
    history: list[Call] = []
    deadline = time.monotonic() + PHASE_BOUND_S
    with chaos.stack.channel() as channel:
        stub = chaos.stack.stub(channel)
        while time.monotonic() < deadline:
            history.append(call(stub, grant_id))
            if until(history[-1]):
                return history
            time.sleep(pause)
    raise AssertionError(f"phase did not end; last outcomes {[c.code for c in history[-5:]]}")


def assert_never_expired(history: list[Call]) -> None:
    for c in history:
        if c.token is not None:
            assert jwt_exp(c.token) > c.answered, "an expired access token was served"


def test_a06_as_down_warm_cache_served_then_unavailable_then_recovers(chaos: ChaosStacks) -> None:
    c = chaos.up("a06", **LIFETIME)
    grant_id = login(c.stack)
    first = get_token(c.stack, grant_id).token.access_token
    refreshes_before = len(c.refresh_entries())
    broker_pid = c.stack.broker.pid if c.stack.broker else None

    c.proxy.update(down=True)
    down = poll(c, grant_id, lambda x: x.code != OK)
    served = [x for x in down if x.code == OK]
    assert served, "the still-valid cached token was not served while the AS was down"
    assert {x.token for x in served} == {first}
    assert down[-1].code == UNAVAILABLE  # not INTERNAL
    assert_never_expired(down)
    assert len(c.refresh_entries()) == refreshes_before  # the AS was unreachable
    assert grant_of(c.stack, grant_id).last_error == AuthServerUnavailable.reason

    c.proxy.clear()
    back = poll(c, grant_id, lambda x: x.code == OK)
    assert {x.code for x in back} <= {OK, UNAVAILABLE}
    assert back[-1].token not in (None, first)
    assert_never_expired(back)
    assert c.stack.broker is not None and c.stack.broker.pid == broker_pid
    assert c.stack.broker.poll() is None  # recovered without a restart
    assert grant_of(c.stack, grant_id).status == broker_pb2.GRANT_STATUS_ACTIVE


def _refresh_lost_once(chaos: ChaosStacks, name: str, grace: int) -> tuple[Chaos, str, str]:
    c = chaos.up(name, refresh_grace_seconds=grace, **LIFETIME)
    grant_id = login(c.stack)
    first = get_token(c.stack, grant_id).token.access_token
    # The AS processes (and rotates) the next refresh; its answer never reaches the broker.
    c.proxy.update(reset_on_request=REFRESH, reset_budget=1)
    return c, grant_id, first


def test_a07_reset_after_rotation_grace_60_one_retry_with_old_rt_succeeds(
    chaos: ChaosStacks,
) -> None:
    c, grant_id, first = _refresh_lost_once(chaos, "a07g60", 60)
    history = poll(c, grant_id, lambda x: x.code == OK and x.token != first)
    assert_never_expired(history)
    assert {x.code for x in history} == {OK}  # the cached token covered the retry
    assert c.proxy.stats().resets == 1
    refreshes = c.refresh_entries()
    assert len(refreshes) == 2
    assert refreshes[0]["form"]["refresh_token"] == refreshes[1]["form"]["refresh_token"]
    assert [r["status"] for r in refreshes] == [200, 200]
    lost, kept = refreshes[0]["issued"], refreshes[1]["issued"]
    assert history[-1].token == kept["access_token"] != lost["access_token"]
    # The new refresh token is the one stored: the next refresh presents it.
    c.proxy.clear()
    again = poll(c, grant_id, lambda x: x.code == OK and x.token != history[-1].token)
    assert_never_expired(again)
    refreshes = c.refresh_entries()
    assert len(refreshes) == 3
    assert refreshes[2]["form"]["refresh_token"] == kept["refresh_token"]
    assert refreshes[2]["status"] == 200


def test_a07_reset_after_rotation_grace_0_flags_grant_once_no_loop(chaos: ChaosStacks) -> None:
    c, grant_id, first = _refresh_lost_once(chaos, "a07g0", 0)
    history = poll(c, grant_id, lambda x: x.code != OK)
    assert history[-1].code == FAILED_PRECONDITION
    assert {x.token for x in history if x.code == OK} == {first}
    assert_never_expired(history)
    refreshes = c.refresh_entries()
    assert [r["status"] for r in refreshes] == [200, 400]  # exactly one extra request
    assert refreshes[1]["error"] == "invalid_grant"
    assert grant_of(c.stack, grant_id).status == broker_pb2.GRANT_STATUS_REAUTHORIZATION_REQUIRED
    # No loop: later calls and background passes never ask the AS again.
    later = [poll(c, grant_id, lambda x: True)[-1] for _ in range(5)]
    time.sleep(3 * 5.0)  # three background intervals of the stack
    later += poll(c, grant_id, lambda x: True)
    assert {x.code for x in later} == {FAILED_PRECONDITION}
    assert len(c.refresh_entries()) == 2


def test_a04_trickled_token_response_bounded_nothing_stored_cache_served(
    chaos: ChaosStacks,
) -> None:
    c = chaos.up("a04", refresh_grace_seconds=60, **LIFETIME)
    grant_id = login(c.stack)
    first = get_token(c.stack, grant_id).token.access_token
    stored_before = grant_of(c.stack, grant_id).access_expires_at.ToNanoseconds()
    before = c.proxy.stats().bytes_down
    c.proxy.update(bandwidth=1)  # 1 byte/s: a token response would take over an hour

    history = poll(c, grant_id, lambda x: x.code != OK)
    assert history[-1].code == UNAVAILABLE  # not INTERNAL
    served = [x for x in history if x.code == OK]
    assert served and {x.token for x in served} == {first}
    assert_never_expired(history)
    refreshes = c.refresh_entries()
    assert 1 <= len(refreshes) <= 3  # bounded attempts (refresh_max_attempts)
    response_size = min(len(str(r["issued"])) for r in refreshes if r["issued"])
    stats = c.proxy.stats()
    # The broker gave up on every trickled answer (each bounded by http_timeout) long before it
    # could have been delivered, and closed those connections.
    assert stats.bytes_down - before < response_size
    assert stats.open_connections == 0
    grant = grant_of(c.stack, grant_id)
    assert grant.access_expires_at.ToNanoseconds() == stored_before  # nothing stored
    assert grant.status == broker_pb2.GRANT_STATUS_ACTIVE
    assert grant.last_error == AuthServerUnavailable.reason


CHAOS_SECONDS = 60.0
TOXIC_CHOICES: list[Callable[[random.Random], Toxics]] = [
    lambda r: Toxics(),
    lambda r: Toxics(latency_ms=r.randint(100, 2500)),
    lambda r: Toxics(timeout=True),
    lambda r: Toxics(reset_on_request=REFRESH, reset_budget=1),
    lambda r: Toxics(reset_after=r.randint(0, 400)),
    lambda r: Toxics(bandwidth=r.randint(1, 200)),
    lambda r: Toxics(limit_data=r.randint(50, 600)),
    lambda r: Toxics(down=True),
]


def test_j04_lite_randomised_toxics_history_invariants(chaos: ChaosStacks) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(2**32)))
    print(f"J04 chaos seed: {seed} (CHAOS_SEED={seed} reproduces the schedule)")
    rng = random.Random(seed)
    grace = 60
    c = chaos.up(
        "j04",
        refresh_grace_seconds=grace,
        access_token_ttl=20,
        refresh_threshold=12.0,
        min_serve_ttl=5.0,
        background_interval=2.0,
    )
    grant_id = login(c.stack)
    intruder_cert, intruder_key = c.stack.issue_client_cert(
        "spiffe://demo.local/intruder", "intruder"
    )

    history: list[Call] = []
    denied: list[Call] = []
    stop = threading.Event()

    def client() -> None:
        with c.stack.channel() as channel:
            stub = c.stack.stub(channel)
            while not stop.is_set():
                history.append(call(stub, grant_id))
                time.sleep(0.2)

    def intruder() -> None:
        with c.stack.channel(intruder_cert, intruder_key) as channel:
            stub = c.stack.stub(channel)
            while not stop.is_set():
                denied.append(call(stub, grant_id))
                time.sleep(1.0)

    threads = [threading.Thread(target=client), threading.Thread(target=intruder)]
    for t in threads:
        t.start()
    schedule: list[tuple[float, Toxics]] = []
    try:
        elapsed = 0.0
        while elapsed < CHAOS_SECONDS:
            toxics = rng.choice(TOXIC_CHOICES)(rng)
            hold = rng.uniform(2.0, 8.0)
            schedule.append((hold, toxics))
            print(f"  t+{elapsed:5.1f}s for {hold:4.1f}s: {toxics}")
            c.proxy.set(toxics)
            time.sleep(hold)
            elapsed += hold
        c.proxy.clear()
        # Recovery after the faults clear (unless the grant was legitimately lost).
        tail = poll(
            c, grant_id, lambda x: x.code in (OK, FAILED_PRECONDITION) and x.sent > time.time() - 1
        )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        c.proxy.clear()
    # The client thread keeps calling while the tail is polled: order the calls by time.
    calls = sorted(history + tail, key=lambda x: x.sent)
    codes = {x.code for x in calls}
    print(f"  outcomes: { {str(k): sum(1 for x in calls if x.code == k) for k in codes} }")
    # 1. Never an expired access token.
    assert_never_expired(calls)
    # 2. Never a token to an unauthorized identity.
    assert denied and {x.code for x in denied} == {grpc.StatusCode.PERMISSION_DENIED}
    # 3. Typed outcomes only: no INTERNAL, no UNKNOWN.
    assert codes <= {OK, UNAVAILABLE, FAILED_PRECONDITION, grpc.StatusCode.DEADLINE_EXCEEDED}
    # 4. A refresh token is presented after its successor was issued only within the grace.
    entries = c.stack.peer.token_requests()
    successor_at: dict[str, float] = {}
    reused = 0
    for entry in entries:
        presented = entry["form"].get("refresh_token")
        if presented in successor_at:
            reused += 1
            assert entry["at"] - successor_at[presented] <= grace * 1000
        if entry["status"] == 200 and presented and presented not in successor_at:
            successor_at[presented] = float(entry["at"])
    # 5. Grant loss only after a lost answer, flagged, and final: after the first
    #    FAILED_PRECONDITION nothing is served again.
    lost = [x for x in calls if x.code == FAILED_PRECONDITION]
    if lost:
        assert any(e["error"] == "invalid_grant" for e in entries)
        flagged_at = min(x.answered for x in lost)
        assert all(x.code == FAILED_PRECONDITION for x in calls if x.sent >= flagged_at)
        assert (
            grant_of(c.stack, grant_id).status == broker_pb2.GRANT_STATUS_REAUTHORIZATION_REQUIRED
        )
    else:
        assert calls[-1].code == OK  # recovered once the faults cleared
    print(f"  refresh requests: {len(entries)}, old refresh tokens re-presented: {reused}")
