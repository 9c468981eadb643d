"""The running server end to end: limits, health, reflection, deadlines, streams, tracing,
error mapping and the login RPCs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.trace import SpanKind

from broker import errors as e
from broker.server.gen.broker.v1 import broker_pb2 as pb
from tests.server.conftest import ADMIN, APP, Harness, started_harness
from tests.server.fakes import FakeBroker
from tests.server.rpc import fails

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def test_f01_oversized_message_is_resource_exhausted_and_server_keeps_serving(
    harness: Harness,
) -> None:
    s = harness.stub_for(ADMIN)
    err = await fails(s.ListGrants(pb.ListGrantsRequest(label="x" * (64 * 1024 + 1))))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert harness.broker.calls == []
    reply = await s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
    assert reply.token.grant_id == "g-1"


async def test_f08_health_serving_not_serving_and_unknown_service(harness: Harness) -> None:
    h = health_pb2_grpc.HealthStub(harness.channel(harness.ca.issue(uris=(APP,))))
    for service in ("", "broker.v1.TokenBroker"):
        reply = await h.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    watch = h.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    await harness.running.set_serving(False)
    second = await watch.read()
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    reply = await h.Check(health_pb2.HealthCheckRequest(service="broker.v1.TokenBroker"))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    err = await fails(h.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))
    assert err.code() is grpc.StatusCode.NOT_FOUND


async def _list_services(channel: Any) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    return [s.name for s in reply.list_services_response.service]


async def test_f09_reflection_is_off_by_default(harness: Harness) -> None:
    channel = harness.channel(harness.ca.issue(uris=(ADMIN,)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _list_services(channel)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


def _v1_reflection_classes() -> tuple[Any, Any]:
    """The v1 request/response classes, from the v1 descriptor the server added to the pool."""
    pool = descriptor_pool.Default()
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
        ),
    )


async def _ask_v1(channel: Any, **request: Any) -> Any:
    """One request on grpc.reflection.v1.ServerReflection, with v1 messages."""
    req_cls, resp_cls = _v1_reflection_classes()
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )()
    await call.write(req_cls(**request))
    reply = await call.read()
    await call.done_writing()
    return reply


async def test_reflection_lists_the_services_when_enabled(tmp_path: Path) -> None:
    """Both reflection protocols answer: v1alpha (grpcio-reflection's) and v1 (what current
    tools ask for first), listing the same services, the two reflection services included."""
    async with started_harness(tmp_path, reflection=True) as h:
        channel = h.channel(h.ca.issue(uris=(ADMIN,)))
        names = await _list_services(channel)
        assert "broker.v1.TokenBroker" in names
        assert "grpc.health.v1.Health" in names
        assert "grpc.reflection.v1alpha.ServerReflection" in names
        assert "grpc.reflection.v1.ServerReflection" in names
        v1 = await _ask_v1(channel, list_services="")
        assert sorted(s.name for s in v1.list_services_response.service) == sorted(names)
        described = await _ask_v1(channel, file_containing_symbol="broker.v1.TokenBroker")
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in described.file_descriptor_response.file_descriptor_proto
        ]
        (api,) = [f for f in files if f.package == "broker.v1"]
        assert [s.name for s in api.service] == ["TokenBroker"]
        own = await _ask_v1(channel, file_containing_symbol="grpc.reflection.v1.ServerReflection")
        (v1_file,) = own.file_descriptor_response.file_descriptor_proto
        assert descriptor_pb2.FileDescriptorProto.FromString(v1_file).package == (
            "grpc.reflection.v1"
        )
        missing = await _ask_v1(channel, file_containing_symbol="no.such.Symbol")
        assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


ERROR_CASES: list[tuple[BaseException, grpc.StatusCode]] = [
    (e.GrantNotFound("grant not found"), grpc.StatusCode.NOT_FOUND),
    (e.ReauthorizationRequired("log in again"), grpc.StatusCode.FAILED_PRECONDITION),
    (e.InvalidGrant(status_code=400), grpc.StatusCode.FAILED_PRECONDITION),
    (e.AuthServerUnavailable("as down", status_code=503), grpc.StatusCode.UNAVAILABLE),
    (e.HsmUnavailable("hsm gone"), grpc.StatusCode.UNAVAILABLE),
    (e.UnexpectedResponse("html body", status_code=200), grpc.StatusCode.UNAVAILABLE),
    (e.TokenValidationError("bad id_token"), grpc.StatusCode.UNAVAILABLE),
    (e.StoreError("db down"), grpc.StatusCode.UNAVAILABLE),
    (e.ConfigError("broken"), grpc.StatusCode.INTERNAL),
    (RuntimeError("bug with secret-ish detail"), grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("error", "code"), ERROR_CASES, ids=lambda v: type(v).__name__)
async def test_domain_errors_map_to_status_end_to_end(
    harness: Harness, error: BaseException, code: grpc.StatusCode
) -> None:
    harness.broker.error = error
    s = harness.stub_for(ADMIN)
    for call in (
        s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")),
        s.GetGrant(pb.GetGrantRequest(grant_id="g-1")),
        s.ListGrants(pb.ListGrantsRequest()),
        s.RevokeGrant(pb.RevokeGrantRequest(grant_id="g-1")),
    ):
        err = await fails(call)
        assert err.code() is code
        if code is grpc.StatusCode.INTERNAL:
            assert err.details() == "internal error"
    watch = s.WatchAccessToken(pb.WatchAccessTokenRequest(grant_id="g-1"))
    err = await fails(watch.read())
    assert err.code() is code


async def test_watch_streams_updates_from_the_broker(harness: Harness) -> None:
    s = harness.stub_for(APP)
    call = s.WatchAccessToken(pb.WatchAccessTokenRequest(grant_id="g-1"))
    first = await call.read()
    assert first.token.access_token == "at-g-1-0"
    await harness.broker.updates.put(harness.broker.token("g-1", 1))
    await harness.broker.updates.put(harness.broker.token("g-1", 2))
    second, third = await call.read(), await call.read()
    assert [second.token.access_token, third.token.access_token] == ["at-g-1-1", "at-g-1-2"]
    assert third.token.expires_at.seconds == 1_800_000_302
    await harness.broker.updates.put(None)
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def test_watch_of_a_forbidden_grant_is_denied(harness: Harness) -> None:
    call = harness.stub_for(APP).WatchAccessToken(pb.WatchAccessTokenRequest(grant_id="g-2"))
    err = await fails(call.read())
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert harness.broker.calls == []


async def test_f05_caller_deadline_is_deadline_exceeded(harness: Harness) -> None:
    harness.broker.gate = asyncio.Event()
    s = harness.stub_for(APP)
    err = await fails(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"), timeout=0.2))
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert harness.broker.entered.is_set()
    harness.broker.gate.set()
    reply = await s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
    assert reply.token.grant_id == "g-1"


async def test_f05_server_max_deadline_applies_when_caller_sets_none(tmp_path: Path) -> None:
    async with started_harness(tmp_path, max_deadline=0.2) as h:
        h.broker.gate = asyncio.Event()
        s = h.stub_for(APP)
        err = await fails(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
        assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert err.details() == "deadline exceeded"


async def test_f06_rpcs_above_the_concurrency_limit_fail_fast(tmp_path: Path) -> None:
    async with started_harness(tmp_path, max_concurrent_rpcs=2) as h:
        gate = asyncio.Event()
        h.broker.gate = gate
        s = h.stub_for(APP)
        blocked = [
            asyncio.ensure_future(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
            for _ in range(2)
        ]
        while len(h.broker.calls) < 2:
            await asyncio.sleep(0.01)
        err = await fails(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        replies = await asyncio.gather(*blocked)
        assert [r.token.grant_id for r in replies] == ["g-1", "g-1"]


async def test_trace_context_from_metadata_becomes_the_server_span_parent(
    harness: Harness,
) -> None:
    s = harness.stub_for(APP)
    await s.GetAccessToken(
        pb.GetAccessTokenRequest(grant_id="g-1"),
        metadata=(("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),),
    )
    spans = [sp for sp in await harness.finished_spans(1) if sp.name.endswith("GetAccessToken")]
    assert len(spans) == 1
    span = spans[0]
    assert span.name == "broker.v1.TokenBroker/GetAccessToken"
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None
    assert span.parent.span_id == int(PARENT_ID, 16)
    assert span.context.trace_id == int(TRACE_ID, 16)
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert span.attributes["rpc.method"] == "GetAccessToken"
    for value in span.attributes.values():
        assert "at-g-1" not in str(value)


async def test_span_records_the_status_code_of_a_failed_rpc(harness: Harness) -> None:
    harness.broker.error = e.HsmUnavailable("gone")
    await fails(harness.stub_for(APP).GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
    (span,) = await harness.finished_spans(1)
    assert span.parent is None
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert not span.status.is_ok


async def test_login_rpcs_round_trip(harness: Harness) -> None:
    s = harness.stub_for(ADMIN)
    started = await s.StartAuthorization(pb.StartAuthorizationRequest(label="crm"))
    assert started.authorization_url.startswith("https://verifier.example/authorize")
    assert started.expires_at.seconds == 1_800_000_600
    assert started.expires_at.nanos == 500_000_000
    got = await s.GetLogin(pb.GetLoginRequest(login_id=started.login_id))
    assert got.login.state == pb.LOGIN_STATE_PENDING
    done = await s.CompleteAuthorization(
        pb.CompleteAuthorizationRequest(code="abc", state="st", iss="https://verifier.example")
    )
    assert done.login.state == pb.LOGIN_STATE_COMPLETED
    assert done.login.grant_id == "g-new"
    failed = await s.CompleteAuthorization(
        pb.CompleteAuthorizationRequest(state="st", error="access_denied")
    )
    assert failed.login.state == pb.LOGIN_STATE_FAILED
    assert failed.login.error == "access_denied"
    assert harness.logins.completed == [  # proto3's "" (not sent) reaches the service as None
        ("abc", "st", "https://verifier.example", None),
        (None, "st", None, "access_denied"),
    ]
    err = await fails(s.GetLogin(pb.GetLoginRequest(login_id="login-404")))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    harness.logins.error = e.AuthorizationResponseError("unknown state")
    err = await fails(s.CompleteAuthorization(pb.CompleteAuthorizationRequest(code="c", state="s")))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_grant_rpcs_never_carry_tokens(harness: Harness) -> None:
    s = harness.stub_for(ADMIN)
    grant = (await s.GetGrant(pb.GetGrantRequest(grant_id="g-2"))).grant
    assert (grant.grant_id, grant.label, grant.status) == ("g-2", "erp", pb.GRANT_STATUS_ACTIVE)
    wire = grant.SerializeToString()
    assert b"at-g-2" not in wire
    assert b"rt-g-2" not in wire
    listed = await s.ListGrants(pb.ListGrantsRequest(label="erp"))
    assert [g.grant_id for g in listed.grants] == ["g-2"]
    await s.RevokeGrant(pb.RevokeGrantRequest(grant_id="g-2"))
    assert harness.broker.revoked == ["g-2"]


async def test_stop_drains_in_flight_rpcs(tmp_path: Path) -> None:
    async with started_harness(tmp_path) as h:
        broker: FakeBroker = h.broker
        broker.gate = asyncio.Event()
        s = h.stub_for(APP)
        pending = asyncio.ensure_future(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
        await broker.entered.wait()
        stopping = asyncio.ensure_future(h.running.stop(30))
        await asyncio.sleep(0)
        broker.gate.set()
        reply = await pending
        assert reply.token.grant_id == "g-1"
        await stopping


async def test_each_call_continues_its_own_callers_trace(harness: Harness) -> None:
    s = harness.stub_for(APP)
    parents = ["00f067aa0ba902b7", "1111111111111111"]
    for parent in parents:
        await s.GetAccessToken(
            pb.GetAccessTokenRequest(grant_id="g-1"),
            metadata=(("traceparent", f"00-{TRACE_ID}-{parent}-01"),),
        )
    await s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
    spans = await harness.finished_spans(3)
    assert [sp.parent.span_id if sp.parent else None for sp in spans] == [
        int(parents[0], 16),
        int(parents[1], 16),
        None,
    ]
