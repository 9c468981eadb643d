"""Resource limits and overload on a real server (TEST-CATALOGUE F02, F06, F07).

Every test is bounded by ``asyncio.timeout``; waits poll server-side counters, never the clock.
A call's status can reach the client before the server handler's ``finally`` gave its slot
back, so "no slot leaked" is awaited (bounded), not asserted at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker.errors import ConfigError, HsmUnavailable
from broker.server.gen.broker.v1 import broker_pb2 as pb
from broker.server.limits import (
    MIN_STREAMS_PER_CONNECTION,
    ConcurrencyLimiter,
    client_retry_service_config,
    server_options,
    streams_per_connection,
)
from tests.server.conftest import ADMIN, APP, Harness, make_harness, started_harness, stub
from tests.server.rpc import code_of, mtls_channel

BOUND = 60.0  # seconds: upper bound of any test here, never an assertion


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[Harness]:
    """At most two concurrent broker RPCs."""
    async with started_harness(tmp_path, max_concurrent_rpcs=2) as h:
        yield h


def _limiter(h: Harness) -> ConcurrencyLimiter:
    assert h.running.limiter is not None
    return h.running.limiter


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def _get(s: Any, **kwargs: Any) -> Any:
    return s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"), **kwargs)


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rpcs", "streams"), [(1, MIN_STREAMS_PER_CONNECTION), (100, 1024), (256, 1024), (1000, 4000)]
)
def test_f06_stream_limit_per_connection_stays_above_the_rpc_limit(rpcs: int, streams: int) -> None:
    assert streams_per_connection(rpcs) == streams
    options = dict(server_options(max_message_bytes=1024, max_concurrent_rpcs=rpcs))
    assert options["grpc.max_concurrent_streams"] == streams


def test_f02_metadata_soft_and_hard_limits_are_equal() -> None:
    options = dict(server_options(max_message_bytes=1024, max_metadata_bytes=12_000))
    assert options["grpc.max_metadata_size"] == 12_000
    assert options["grpc.absolute_max_metadata_size"] == 12_000


async def test_a_second_server_on_a_port_already_served_fails_to_start(
    tmp_path: Path, harness: Harness
) -> None:
    """gRPC sets SO_REUSEPORT by default: a second server bound the same port and took a share
    of its connections (two brokers, or two test workers racing for one port). It must fail."""
    (tmp_path / "second").mkdir()
    try:
        second, provider = await make_harness(tmp_path / "second", bind=f"127.0.0.1:{harness.port}")
    except ConfigError as exc:
        assert f"could not bind 127.0.0.1:{harness.port}" in str(exc)
    else:
        await second.running.stop(None)
        provider.shutdown()
        pytest.fail("a second server started on a port another server serves")
    assert await code_of(_get(harness.stub_for(APP), timeout=BOUND)) is grpc.StatusCode.OK


def test_f07_handshake_timeout_option_in_milliseconds() -> None:
    options = dict(server_options(max_message_bytes=1024, handshake_timeout=0.25))
    assert options["grpc.server_handshake_timeout_ms"] == 250


def test_f06_limiter_needs_at_least_one_slot() -> None:
    with pytest.raises(ConfigError):
        ConcurrencyLimiter(0)


# -- F06: concurrency ------------------------------------------------------------------------


async def test_f06_thousand_concurrent_calls_on_one_channel_are_ok_or_resource_exhausted(
    tmp_path: Path,
) -> None:
    """1,000 calls on ONE fresh channel, all held in the broker: exactly ``max_concurrent_rpcs``
    succeed, the rest fail fast with RESOURCE_EXHAUSTED, none is refused by the transport
    (UNAVAILABLE), which is what a stream limit below the call count produced."""
    async with asyncio.timeout(BOUND):
        async with started_harness(tmp_path, max_concurrent_rpcs=256) as h:
            gate = asyncio.Event()
            h.broker.gate = gate
            limiter = _limiter(h)
            s = h.stub_for(APP)
            calls = [asyncio.ensure_future(code_of(_get(s))) for _ in range(1000)]
            await _until(lambda: limiter.active + limiter.rejected == 1000)
            assert limiter.active == 256
            gate.set()
            codes = collections.Counter(await asyncio.gather(*calls))
            assert codes == {grpc.StatusCode.OK: 256, grpc.StatusCode.RESOURCE_EXHAUSTED: 744}
            await _until(lambda: limiter.active == 0)


async def test_f06_thousand_fast_calls_on_one_channel_all_succeed(tmp_path: Path) -> None:
    """Without a held broker, 1,000 concurrent calls on one channel below the RPC limit all
    succeed: the transport refuses none of them."""
    async with asyncio.timeout(BOUND):
        async with started_harness(tmp_path, max_concurrent_rpcs=1000) as h:
            s = h.stub_for(APP)
            codes = collections.Counter(
                await asyncio.gather(*(code_of(_get(s)) for _ in range(1000)))
            )
            assert codes == {grpc.StatusCode.OK: 1000}
            assert len(h.broker.calls) == 1000


async def test_f06_health_is_answered_while_broker_rpcs_are_exhausted(small: Harness) -> None:
    async with asyncio.timeout(BOUND):
        gate = asyncio.Event()
        small.broker.gate = gate
        limiter = _limiter(small)
        s = small.stub_for(APP)
        blocked = [asyncio.ensure_future(code_of(_get(s))) for _ in range(2)]
        await _until(lambda: limiter.active == 2)
        assert await code_of(_get(s)) is grpc.StatusCode.RESOURCE_EXHAUSTED
        health = health_pb2_grpc.HealthStub(small.channel(small.ca.issue(uris=(APP,))))
        checks = await asyncio.gather(
            *(
                health.Check(health_pb2.HealthCheckRequest(service=name))
                for name in ("", "broker.v1.TokenBroker") * 5
            )
        )
        assert {c.status for c in checks} == {health_pb2.HealthCheckResponse.SERVING}
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await small.running.set_serving(False)
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert limiter.active == 2  # health took no slot and none was rejected
        assert limiter.rejected == 1
        gate.set()
        assert await asyncio.gather(*blocked) == [grpc.StatusCode.OK] * 2


async def test_f06_overload_logs_once_when_it_starts_and_once_when_it_ends(
    small: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.server.app")
    async with asyncio.timeout(BOUND):
        gate = asyncio.Event()
        small.broker.gate = gate
        limiter = _limiter(small)
        s = small.stub_for(APP)
        blocked = [asyncio.ensure_future(code_of(_get(s))) for _ in range(2)]
        await _until(lambda: limiter.active == 2)
        for _ in range(3):
            assert await code_of(_get(s)) is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limiter.overloaded
        gate.set()
        await asyncio.gather(*blocked)
        await _until(lambda: not limiter.overloaded)
    messages = [r.getMessage() for r in caplog.records if r.name == "broker.server.app"]
    assert messages == [
        "gRPC overload: 2 RPCs in flight, rejecting new calls with RESOURCE_EXHAUSTED",
        "gRPC overload over: 3 calls were rejected",
    ]


async def test_f06_slots_come_back_after_errors_cancels_oversized_requests_and_streams(
    small: Harness,
) -> None:
    """No path leaks a slot: a request refused before the handler (F01), a domain error, a
    caller that cancels mid-call, a watch stream that is closed."""
    async with asyncio.timeout(BOUND):
        limiter = _limiter(small)
        admin = small.stub_for("spiffe://corp.example/admin")
        s = small.stub_for(APP)
        for _ in range(3):
            big = admin.ListGrants(pb.ListGrantsRequest(label="x" * (64 * 1024 + 1)))
            assert await code_of(big) is grpc.StatusCode.RESOURCE_EXHAUSTED
        for _ in range(3):
            unknown = s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-2"))
            assert await code_of(unknown) is grpc.StatusCode.PERMISSION_DENIED
        missing = admin.GetAccessToken(pb.GetAccessTokenRequest(grant_id="nope"))
        assert await code_of(missing) is grpc.StatusCode.NOT_FOUND
        # The status can reach us before the handler's ``finally`` ran: wait, bounded.
        await _until(lambda: limiter.active == 0)

        small.broker.gate = asyncio.Event()
        pending = _get(s)  # a grpc.aio call starts when created
        await _until(lambda: limiter.active == 1)
        assert pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await _until(lambda: limiter.active == 0)
        small.broker.gate = None

        watches = [s.WatchAccessToken(pb.WatchAccessTokenRequest(grant_id="g-1")) for _ in range(2)]
        for w in watches:
            await w.read()
        assert limiter.active == 2
        assert await code_of(_get(s)) is grpc.StatusCode.RESOURCE_EXHAUSTED
        for w in watches:
            w.cancel()
        await _until(lambda: limiter.active == 0)
        assert await code_of(_get(s)) is grpc.StatusCode.OK
        assert limiter.rejected == 1
        await _until(lambda: limiter.active == 0)


async def test_f06_reflection_streams_count_against_the_limit(tmp_path: Path) -> None:
    async with (
        asyncio.timeout(BOUND),
        started_harness(tmp_path, max_concurrent_rpcs=2, reflection=True) as h,
    ):
        gate = asyncio.Event()
        h.broker.gate = gate
        limiter = _limiter(h)
        s = h.stub_for(APP)
        blocked = [asyncio.ensure_future(code_of(_get(s))) for _ in range(2)]
        await _until(lambda: limiter.active == 2)
        refl = reflection_pb2_grpc.ServerReflectionStub(h.channel(h.ca.issue(uris=(ADMIN,))))
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        call = refl.ServerReflectionInfo(iter([request]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        assert await asyncio.gather(*blocked) == [grpc.StatusCode.OK] * 2
        await _until(lambda: limiter.active == 0)
        call = refl.ServerReflectionInfo(iter([request]))
        reply = await call.read()
        assert "broker.v1.TokenBroker" in [x.name for x in reply.list_services_response.service]
        await _until(lambda: limiter.active == 0)


# -- the retry policy callers should use ------------------------------------------------------


def _retrying_stub(h: Harness) -> Any:
    channel = mtls_channel(
        h.port,
        h.ca.issue(uris=(APP,)),
        h.server_ca.pem,
        options=[("grpc.service_config", client_retry_service_config())],
    )
    h.channels.append(channel)
    return stub(channel)


async def test_f06_recommended_retry_policy_retries_unavailable_not_resource_exhausted(
    small: Harness,
) -> None:
    async with asyncio.timeout(BOUND):
        s = _retrying_stub(small)
        original = small.broker.get_access_token
        failures = [HsmUnavailable("hsm gone")]

        async def flaky(grant_id: str, *, min_ttl: float) -> Any:
            if failures:
                small.broker.calls.append(("get_access_token", grant_id, min_ttl))
                raise failures.pop()
            return await original(grant_id, min_ttl=min_ttl)

        small.broker.get_access_token = flaky  # type: ignore[method-assign]
        reply = await _get(s)
        assert reply.token.grant_id == "g-1"
        assert len(small.broker.calls) == 2  # the UNAVAILABLE attempt, then the retry

        gate = asyncio.Event()
        small.broker.gate = gate
        limiter = _limiter(small)
        blocked = [asyncio.ensure_future(code_of(_get(s))) for _ in range(2)]
        await _until(lambda: limiter.active == 2)
        assert await code_of(_get(s)) is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limiter.rejected == 1  # not retried
        gate.set()
        assert await asyncio.gather(*blocked) == [grpc.StatusCode.OK] * 2


@pytest.mark.parametrize("attempts", [1, 6])
def test_f06_retry_policy_attempts_are_bounded(attempts: int) -> None:
    with pytest.raises(ConfigError):
        client_retry_service_config(max_attempts=attempts)


# -- F02: metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((("big", "x" * 20 * 1024),), id="one-20KiB-value"),
        pytest.param(tuple((f"k{i}", "v") for i in range(10_000)), id="10000-keys"),
    ],
)
async def test_f02_oversized_metadata_is_rejected_and_the_server_keeps_serving(
    harness: Harness, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with asyncio.timeout(BOUND):
        s = harness.stub_for(APP)
        assert await code_of(_get(s, metadata=metadata)) is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert harness.broker.calls == []
        assert _limiter(harness).active == 0
        # A value just under the limit still goes through, on the same channel.
        assert await code_of(_get(s, metadata=(("ok", "y" * 15 * 1024),))) is grpc.StatusCode.OK
        assert await code_of(_get(s)) is grpc.StatusCode.OK
        assert len(harness.broker.calls) == 2


# -- F07: connections that never finish the TLS handshake --------------------------------------


async def test_f07_idle_connections_are_closed_after_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    """200 raw TCP connections that never send a ClientHello (and 20 that send half of one) do
    not block a normal client, and the server closes every one of them after the handshake
    timeout (each socket sees EOF or a reset)."""
    async with asyncio.timeout(BOUND):
        async with started_harness(tmp_path, handshake_timeout=0.5) as h:
            opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            try:
                for i in range(220):
                    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
                    opened.append((reader, writer))
                    if i >= 200:  # a TLS record header announcing a ClientHello, then silence
                        writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                        await writer.drain()
                assert await code_of(_get(h.stub_for(APP))) is grpc.StatusCode.OK
                for reader, _ in opened:
                    assert await _closed_by_peer(reader)
                assert await code_of(_get(h.stub_for(APP))) is grpc.StatusCode.OK
            finally:
                for _, writer in opened:
                    writer.close()
                for _, writer in opened:
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection, having sent nothing or only a TLS alert."""
    try:
        data = await reader.read()
    except ConnectionResetError:
        return True
    return data == b"" or data[0] == 0x15
