"""Issue 5 / H02 with the real service: ``broker serve`` exporting traces and metrics over OTLP/HTTP
to an in-process sink (:class:`devtools.otlp_sink.OtlpSink`) through a full run: login
(authorization + code exchange), three blocking refreshes, a caller the policy denies, and the
AS going away. Then the broker is stopped (SIGTERM flushes the exporters) and:

- one GetAccessToken-with-refresh trace is one tree under the client's root span:
  demo-client root -> broker.v1.TokenBroker/GetAccessToken -> tokens.get -> tokens.refresh ->
  oauth.token_request -> keys.sign, all one trace id, and the outbound token request carried
  that trace's ``traceparent`` (recorded by the peer) from its own HTTP CLIENT span;
- span names, kinds and attributes follow the OpenTelemetry RPC (gRPC SERVER span) and HTTP
  (CLIENT span ``POST``) semantic conventions; every exported metric is one of the catalogue
  (:mod:`broker.telemetry.instruments`) with its unit, the semconv histograms among them;
- the broker's stderr is JSON only, even after a plaintext connection made gRPC C-core fail a
  TLS handshake (C-core's own log lines are silenced);
- no secret of the run (PINs, every access/refresh/id token and code the verifier issued or was
  sent, PKCE verifiers, client assertions, request objects, tokens served over gRPC) appears in
  any span, event, attribute, metric, OTLP log record, raw OTLP body, the broker's log or its
  audit log; nor does anything shaped like a JWT.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from broker.server.gen.broker.v1 import broker_pb2
from broker.telemetry import instruments
from devtools.otlp_sink import OtlpSink, SinkSpan
from devtools.peer import stop_peer
from devtools.stack import DevStack
from tests.stacks import RPC_TIMEOUT, Stacks, login

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.softhsm]

ACCESS_TOKEN_TTL = 20
REFRESH_THRESHOLD = 19.0
MIN_SERVE_TTL = 17.0
REFRESHES = 3
CHAIN = (
    "demo.get_access_token",
    "broker.v1.TokenBroker/GetAccessToken",
    "tokens.get",
    "tokens.refresh",
    "oauth.token_request",
    "keys.sign",
)
JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")
SECRET_FORM_FIELDS = ("code", "code_verifier", "refresh_token", "client_assertion", "request")


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    started = OtlpSink().start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def client_tracing(sink: OtlpSink) -> Iterator[TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": "demo-client"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{sink.endpoint}/v1/traces"))
    )
    try:
        yield provider
    finally:
        provider.shutdown()


def sleep_until_invalid(expires_at: float) -> None:
    time.sleep(max(0.0, expires_at - time.time() - MIN_SERVE_TTL + 0.5))


def traced_get(
    stack: DevStack, provider: TracerProvider, grant_id: str
) -> tuple[broker_pb2.AccessToken, str]:
    """GetAccessToken under a client root span, its context sent as gRPC metadata; returns the
    token and the trace id (hex)."""
    tracer = provider.get_tracer("broker.e2e")
    with tracer.start_as_current_span("demo.get_access_token") as root:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        with stack.channel() as channel:
            resp = stack.stub(channel).GetAccessToken(
                broker_pb2.GetAccessTokenRequest(grant_id=grant_id),
                metadata=list(carrier.items()),
                timeout=RPC_TIMEOUT,
            )
        trace_id = format(root.get_span_context().trace_id, "032x")
    token: broker_pb2.AccessToken = resp.token
    return token, trace_id


def secrets_of_the_run(stack: DevStack, log: dict[str, Any], served: list[str]) -> set[str]:
    found: set[str] = set(served)
    found |= {p.read_text().strip() for p in (stack.workdir / "secrets").iterdir()}
    for req in [*log["token_requests"], *log["par_requests"]]:
        found |= {str(req["form"][k]) for k in SECRET_FORM_FIELDS if req["form"].get(k)}
        found |= {str(v) for v in (req.get("issued") or {}).values() if v}
    found |= {str(r["jws"]) for r in log["request_objects"] if r.get("jws")}
    # A JWT's signature alone identifies it: catch a token logged in part, too.
    found |= {s.rsplit(".", 1)[1] for s in list(found) if s.count(".") == 2}
    return {s for s in found if len(s) >= 8}


def exported_units(sink: OtlpSink) -> dict[str, str]:
    """Every metric name the broker exported, with its unit."""
    return {
        m["name"]: m.get("unit", "")
        for d in sink.metrics
        for rm in d.get("resourceMetrics", [])
        for sm in rm.get("scopeMetrics", [])
        for m in sm.get("metrics", [])
    }


async def plaintext_knock(port: int) -> None:
    """An HTTP request on the gRPC TLS port: C-core fails the handshake (and would log it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.read(1024), timeout=RPC_TIMEOUT)
    writer.close()


def chain_of(spans: list[SinkSpan]) -> list[SinkSpan]:
    """Follow CHAIN from the root down through parent links; stops where a link is missing."""
    chain: list[SinkSpan] = []
    parent_id = ""
    for name in CHAIN:
        nxt = [s for s in spans if s.name == name and (not chain or s.parent_span_id == parent_id)]
        if not nxt:
            break
        chain.append(nxt[0])
        parent_id = nxt[0].span_id
    return chain


def test_h02_full_run_traces_one_tree_and_leaks_no_secret(
    stacks: Stacks, sink: OtlpSink, client_tracing: TracerProvider
) -> None:
    stack = stacks.up(
        otlp_endpoint=sink.endpoint,
        access_token_ttl=ACCESS_TOKEN_TTL,
        refresh_threshold=REFRESH_THRESHOLD,
        min_serve_ttl=MIN_SERVE_TTL,
        background_interval=3600,
    )
    grant_id = login(stack)  # authorization (request object by reference) + code exchange
    served: list[str] = []
    traces: list[str] = []
    token, _ = traced_get(stack, client_tracing, grant_id)  # FRESH: from the cache
    served.append(token.access_token)
    for _ in range(REFRESHES):
        sleep_until_invalid(token.expires_at.ToNanoseconds() / 1e9)
        token, trace_id = traced_get(stack, client_tracing, grant_id)
        served.append(token.access_token)
        traces.append(trace_id)
    assert len(set(served)) == REFRESHES + 1

    # A caller with a certificate from the same CA whose identity the policy does not name.
    cert, key = stack.issue_client_cert("spiffe://demo.local/intruder", "intruder")
    with stack.channel(cert, key) as channel, pytest.raises(grpc.RpcError) as denied:
        stack.stub(channel).GetAccessToken(
            broker_pb2.GetAccessTokenRequest(grant_id=grant_id), timeout=RPC_TIMEOUT
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # The AS goes away (its log is read first: it holds every secret it issued and received).
    log = stack.peer.admin_log()
    stop_peer(stack.peer)
    sleep_until_invalid(token.expires_at.ToNanoseconds() / 1e9)
    with stack.channel() as channel, pytest.raises(grpc.RpcError) as unavailable:
        stack.stub(channel).GetAccessToken(
            broker_pb2.GetAccessTokenRequest(grant_id=grant_id), timeout=RPC_TIMEOUT
        )
    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
    asyncio.run(plaintext_knock(stack.grpc_port))

    assert stack.stop_broker() == 0  # SIGTERM: drain, then flush the exporters
    client_tracing.force_flush()

    # --- one trace, one tree ---------------------------------------------------------------
    by_trace = sink.traces()
    spans = by_trace.get(traces[-1], [])
    chain = chain_of(spans)
    assert [s.name for s in chain] == list(CHAIN), [s.name for s in spans]
    assert chain[0].service == "demo-client" and chain[0].parent_span_id == ""
    assert {s.service for s in chain[1:]} == {"broker"}
    assert {s.trace_id for s in chain} == {traces[-1]}
    for trace_id in traces:  # every refresh call is such a tree, none split across traces
        assert [s.name for s in chain_of(by_trace.get(trace_id, []))] == list(CHAIN)

    # --- the token requests carried the caller's trace context ---------------------------------
    refreshes = [r for r in log["token_requests"] if r["grant_type"] == "refresh_token"]
    parents = [r["headers"].get("traceparent", "") for r in refreshes]
    assert len(refreshes) == REFRESHES
    assert [p.split("-")[1] if p else "" for p in parents] == traces
    token_request = next(s for s in chain if s.name == "oauth.token_request")
    (http_span,) = [
        s for s in spans if s.parent_span_id == token_request.span_id and s.name == "POST"
    ]
    assert parents[-1].split("-")[2] == http_span.span_id  # the outbound request's own span

    # --- semantic conventions: spans ---------------------------------------------------------
    server = chain[1]
    assert server.kind == "SPAN_KIND_SERVER"
    assert {k: server.attributes.get(k) for k in ("rpc.system", "rpc.service", "rpc.method")} == {
        "rpc.system": "grpc",
        "rpc.service": "broker.v1.TokenBroker",
        "rpc.method": "GetAccessToken",
    }
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["server.address"] == "127.0.0.1"
    assert server.attributes["server.port"] == stack.grpc_port
    assert server.attributes["network.peer.address"] == "127.0.0.1"
    assert http_span.kind == "SPAN_KIND_CLIENT"
    token_url = next(r for r in log["token_requests"] if r["grant_type"] == "refresh_token")
    assert http_span.attributes["http.request.method"] == "POST"
    assert http_span.attributes["http.response.status_code"] == 200
    assert http_span.attributes["server.address"] == "127.0.0.1"
    assert isinstance(http_span.attributes["server.port"], int)
    assert str(http_span.attributes["url.full"]).endswith("/token"), token_url
    assert "?" not in str(http_span.attributes["url.full"])
    assert "error.type" not in http_span.attributes
    assert all(s.kind == "SPAN_KIND_INTERNAL" for s in chain[2:] if s.name != "keys.sign")
    unavailable_spans = [
        s
        for s in sink.spans
        if s.name == "broker.v1.TokenBroker/GetAccessToken"
        and s.attributes.get("rpc.grpc.status_code") == grpc.StatusCode.UNAVAILABLE.value[0]
    ]
    assert unavailable_spans and all(s.status == "STATUS_CODE_ERROR" for s in unavailable_spans)
    denied_spans = [
        s
        for s in sink.spans
        if s.attributes.get("rpc.grpc.status_code") == grpc.StatusCode.PERMISSION_DENIED.value[0]
    ]
    assert denied_spans and all(s.status != "STATUS_CODE_ERROR" for s in denied_spans)
    failed_posts = [s for s in sink.spans if s.name == "POST" and "error.type" in s.attributes]
    assert failed_posts and all(s.status == "STATUS_CODE_ERROR" for s in failed_posts)

    # --- semantic conventions: metrics -------------------------------------------------------
    units = exported_units(sink)
    catalogue = {spec.name: spec.unit for spec in instruments.ALL}
    assert units == {name: catalogue.get(name, "<not in the catalogue>") for name in units}
    for name in (
        "rpc.server.duration",
        "http.client.request.duration",
        "broker.token.refresh.duration",
        "broker.hsm.sign.duration",
        "broker.hsm.up",
        "broker.tokens.unpersisted_grants",
        "broker.as.clock_skew",
    ):
        assert name in units, sorted(units)

    # --- one log format ----------------------------------------------------------------------
    if not {"GRPC_VERBOSITY", "GRPC_TRACE"} & os.environ.keys():
        for line in (stack.workdir / "broker.log").read_text().splitlines():
            if line.startswith("broker serving:"):  # the one stdout line, for the launcher
                continue
            json.loads(line)

    # --- no secret anywhere ------------------------------------------------------------------
    secrets = secrets_of_the_run(stack, log, served)
    haystacks: dict[str, bytes] = {
        "spans": json.dumps([s.__dict__ for s in sink.spans], default=str).encode(),
        "metrics": json.dumps(sink.metrics).encode(),
        "otlp logs": json.dumps(sink.logs).encode(),
        "broker.log": (stack.workdir / "broker.log").read_bytes(),
        "audit log": stack.audit_log.read_bytes(),
        **{f"raw OTLP body {i}": body for i, body in enumerate(sink.raw_bodies)},
    }
    assert sink.spans and sink.metrics and haystacks["broker.log"]
    assert len(secrets) > 20  # PINs, codes, verifiers, assertions, tokens of 4 token requests
    # The scan can fail: the peer's own log is full of them.
    assert any(s.encode() in json.dumps(log).encode() for s in secrets)
    assert JWT_SHAPE.search(json.dumps(log).encode())
    leaks = sorted(
        {
            f"{where}: {s[:6]}..."
            for where, hay in haystacks.items()
            for s in secrets
            if s.encode() in hay
        }
        | {
            f"{where}: JWT-shaped value"
            for where, hay in haystacks.items()
            if JWT_SHAPE.search(hay)
        }
    )
    print(
        f"H02: {len(sink.spans)} spans, {len(sink.metrics)} metric exports, "
        f"{len(sink.raw_bodies)} OTLP bodies scanned for {len(secrets)} secrets: {len(leaks)} found"
    )
    assert leaks == []
