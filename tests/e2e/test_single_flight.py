"""G06 against the real AS: 1,000 concurrent GetAccessToken calls for one grant whose access token
needs a blocking refresh -> exactly one refresh_token request at the verifier (oidc-provider
8.8.1), and every caller gets the same new access token.

The verifier issues 24-second access tokens; the broker serves them FRESH for 12 s and never with
11 s or less left, so 13 s after issue the token is INVALID and the next call must wait for a
refresh. The background refresher is slowed to once an hour so that nothing but the burst can
start that refresh.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest
from grpc_health.v1.health_pb2_grpc import HealthStub

from broker.server.gen.broker.v1 import broker_pb2, broker_pb2_grpc
from tests.stacks import RPC_TIMEOUT, Stacks, get_token, login

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.softhsm]

ACCESS_TOKEN_TTL = 24
REFRESH_THRESHOLD = 12.0
MIN_SERVE_TTL = 11.0
CALLERS = 1000
CHANNELS = 12
"""The server allows 100 concurrent HTTP/2 streams per connection (broker/server/app.py). With
more calls in flight on one connection than that, grpc 1.85 here had the server refuse streams
(RST_STREAM REFUSED_STREAM, surfaced as UNAVAILABLE, not retried): 117-207 of 1,000 calls over
4 channels. 12 channels keep every connection under the limit, so all 1,000 are in flight at
once."""


async def test_g06_thousand_concurrent_calls_cause_one_refresh_at_the_real_as(
    stacks: Stacks,
) -> None:
    stack = stacks.up(
        access_token_ttl=ACCESS_TOKEN_TTL,
        refresh_threshold=REFRESH_THRESHOLD,
        min_serve_ttl=MIN_SERVE_TTL,
        background_interval=3600,
        max_concurrent_rpcs=CALLERS * 2,
    )
    grant_id = await asyncio.to_thread(login, stack)
    first = (await asyncio.to_thread(get_token, stack, grant_id)).token
    assert first.expires_at.seconds - time.time() > MIN_SERVE_TTL  # the token of the login
    # Sleep until the cached token is INVALID (never touching it meanwhile: a call while it
    # is STALE would start a background refresh).
    await asyncio.sleep(max(0.0, first.expires_at.seconds - time.time() - MIN_SERVE_TTL + 1.0))
    before = await asyncio.to_thread(stack.refresh_requests)

    channels = [stack.aio_channel() for _ in range(CHANNELS)]
    try:
        stubs = [broker_pb2_grpc.TokenBrokerStub(c) for c in channels]  # type: ignore[no-untyped-call]
        request = broker_pb2.GetAccessTokenRequest(grant_id=grant_id)
        # Connect first, so the burst measures the token core, not 12 TLS handshakes.
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), RPC_TIMEOUT)
            await HealthStub(channel).Check(HealthCheckRequest(), timeout=RPC_TIMEOUT)

        async def one(i: int) -> str | tuple[grpc.StatusCode, str]:
            try:
                resp = await stubs[i % CHANNELS].GetAccessToken(request, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                return (exc.code(), str(exc.details()))
            return str(resp.token.access_token)

        results = await asyncio.gather(*(one(i) for i in range(CALLERS)))
    finally:
        await asyncio.gather(*(c.close() for c in channels))

    after = await asyncio.to_thread(stack.refresh_requests)
    failures = Counter(r for r in results if isinstance(r, tuple))
    tokens = {r for r in results if isinstance(r, str)}
    print(
        f"G06: {CALLERS} callers, {failures.total()} failed, {len(tokens)} distinct tokens, "
        f"{after - before} refresh_token request(s) at the AS"
    )
    assert not failures, failures
    assert len(tokens) == 1
    assert tokens != {first.access_token}
    assert after - before == 1
    refreshes = [r for r in stack.peer.token_requests() if r["grant_type"] == "refresh_token"]
    assert refreshes[-1]["status"] == 200
    assert refreshes[-1]["issued"]["access_token"] in tokens
