"""Grants must not die of a short outage (issue 9, section 2): a real ``broker serve``, the real
oidc-provider peer issuing DOME v2-like tokens (the refresh token lives exactly as long as the
access token, 90 s here), and a FaultProxy taking the verifier down for 40 s: five times the
refresh threshold (8 s), less than the budget the fraction schedule keeps (about 45 s + 40 s).

Timeline, seconds after the first token was issued (jitter +-10 %):
- fraction schedule: refreshed at 45 (+-4.5); its new refresh token lives until ~135; the
  verifier is down 65..105; retries go on until ~125 (margin 10 s): the grant survives.
- threshold schedule (emulated: fraction 0.95 is capped at the threshold, lifetime "unknown"):
  first refresh due at ~82, the verifier is down, the refresh token dies at 90: the grant is lost.
The slack around every moment is 15 s or more; the machine need not be idle.
"""

from __future__ import annotations

import time

import grpc
import pytest

from broker.server.gen.broker.v1 import broker_pb2
from tests.chaos.rig import Call, ChaosStacks, call, jwt_exp
from tests.stacks import get_token, grant_of, login

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.softhsm]

LIFETIME = 90  # access and refresh token, as DOME v2 (3600 s) scaled down
THRESHOLD = 8.0
DOWN_AT = 65.0  # after the issue of the first token
DOWN_FOR = 40.0  # > THRESHOLD, < the budget of the fraction schedule
PHASE_BOUND_S = 120.0  # a bound on the final polling phase (never asserted on)

SCHEDULES = {
    "fraction": {"refresh_fraction": "0.5", "refresh_retry_margin": "10"},
    "threshold": {"refresh_fraction": "0.95", "refresh_retry_margin": "10"},
}
LIFETIMES = {"fraction": '"access"', "threshold": '"unknown"'}


def sleep_until(moment: float) -> None:
    while (left := moment - time.time()) > 0:
        time.sleep(min(left, 1.0))


@pytest.mark.parametrize("schedule", ["fraction", "threshold"])
def test_as_down_longer_than_the_threshold_loses_no_grant_with_the_fraction_schedule(
    chaos: ChaosStacks, schedule: str
) -> None:
    c = chaos.up(
        f"budget-{schedule}",
        access_token_ttl=LIFETIME,
        refresh_token_ttl=LIFETIME,
        refresh_threshold=THRESHOLD,
        min_serve_ttl=4.0,
        background_interval=1.0,
        extra_settings={
            "tokens": SCHEDULES[schedule],
            "oauth": {"refresh_token_lifetime": LIFETIMES[schedule]},
        },
    )
    grant_id = login(c.stack)
    issued = jwt_exp(get_token(c.stack, grant_id).token.access_token) - LIFETIME

    sleep_until(issued + DOWN_AT)
    refreshed_before_outage = len(c.refresh_entries())
    c.proxy.update(down=True)
    sleep_until(issued + DOWN_AT + DOWN_FOR)
    c.proxy.clear()

    history: list[Call] = []
    deadline = time.monotonic() + PHASE_BOUND_S
    with c.stack.channel() as channel:
        stub = c.stack.stub(channel)
        while time.monotonic() < deadline:
            history.append(call(stub, grant_id))
            if history[-1].code in (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION):
                break
            time.sleep(0.5)
    final = history[-1]
    status = grant_of(c.stack, grant_id).status
    if schedule == "fraction":
        assert refreshed_before_outage >= 1, "no refresh at half the lifetime"
        assert final.code == grpc.StatusCode.OK, [x.code for x in history[-5:]]
        assert final.token is not None and jwt_exp(final.token) > final.answered
        assert status == broker_pb2.GRANT_STATUS_ACTIVE  # 0 grants lost
    else:
        assert refreshed_before_outage == 0  # the threshold point came during the outage
        assert final.code == grpc.StatusCode.FAILED_PRECONDITION
        assert status == broker_pb2.GRANT_STATUS_REAUTHORIZATION_REQUIRED
