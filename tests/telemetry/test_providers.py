"""Providers built from settings, exporting through the real OTLP exporters to in-process sinks."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.telemetry import RedactingSpanProcessor, build_providers
from broker.telemetry.settings import TelemetrySettings
from devtools.otlp_sink import OtlpSink

JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImRpZDprZXk6ekRuIn0.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
)
RT = "Xk3nq0aZ9PqL2mvB7tYw4sR8uE1oN6cH5jG0fD2kA9s"
DID = "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY"


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    s = OtlpSink().start()
    yield s
    s.stop()


def emit_secret_laden_spans(tracer: trace.Tracer) -> None:
    """Spans as a careless caller might write them."""
    with tracer.start_as_current_span("oauth.token_request") as span:
        span.set_attribute("kid", DID)
        span.set_attribute("grant.id", "550e8400-e29b-41d4-a716-446655440000")
        span.set_attribute("http.status_code", 400)
        span.set_attribute("oauth.refresh_token", RT)
        span.set_attribute("http.request.body", f"grant_type=refresh_token&refresh_token={RT}")
        span.set_attribute("debug.tokens", [JWT, "fine"])
        span.add_event("response", {"id_token": JWT, "error": "invalid_grant"})
        try:
            raise RuntimeError(f"AS said no to {RT}")
        except RuntimeError as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"failed with {JWT}"))


def test_h02_guard_redacts_span_attributes_events_and_status() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RedactingSpanProcessor(SimpleSpanProcessor(exporter)))
    emit_secret_laden_spans(provider.get_tracer("broker.test"))
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["kid"] == DID
    assert attrs["grant.id"] == "550e8400-e29b-41d4-a716-446655440000"
    assert attrs["http.status_code"] == 400
    assert attrs["oauth.refresh_token"] == "[REDACTED]"
    assert attrs["http.request.body"] == "grant_type=refresh_token&refresh_token=[REDACTED]"
    assert list(attrs["debug.tokens"]) == ["[REDACTED]", "fine"]  # type: ignore[arg-type]
    events = {e.name: dict(e.attributes or {}) for e in span.events}
    assert events["response"] == {"id_token": "[REDACTED]", "error": "invalid_grant"}
    assert RT not in str(events["exception"]["exception.message"])
    assert RT not in str(events["exception"]["exception.stacktrace"])
    assert JWT not in (span.status.description or "")
    assert span.status.status_code == trace.StatusCode.ERROR
    provider.shutdown()


def test_h02_otlp_http_export_carries_no_secret_and_names_the_service(sink: OtlpSink) -> None:
    settings = TelemetrySettings(
        traces="otlp-http", metrics="otlp-http", endpoint=sink.endpoint, service_name="broker-test"
    )
    telemetry = build_providers(settings, version="9.9.9")
    assert trace.get_tracer_provider() is not telemetry.tracer_provider  # never global here
    emit_secret_laden_spans(telemetry.tracer("broker.test"))
    telemetry.metrics.record_token_request("GetAccessToken", "ok")
    telemetry.metrics.record_as_error("token", RT)  # a careless label
    telemetry.shutdown()
    telemetry.shutdown()  # idempotent

    (span,) = sink.spans
    assert span.service == "broker-test"
    assert span.attributes["kid"] == DID
    body = b"".join(sink.raw_bodies)
    for secret in (RT, JWT):
        assert secret.encode() not in body
    assert b"9.9.9" in body  # service.version
    names = _metric_names(sink.metrics)
    assert {"broker.token.requests", "broker.as.errors"} <= names
    assert b"other" in body  # the careless label became the bounded "other"


def _metric_names(docs: list[dict[str, Any]]) -> set[str]:
    return {
        m["name"]
        for d in docs
        for rm in d.get("resourceMetrics", [])
        for sm in rm.get("scopeMetrics", [])
        for m in sm.get("metrics", [])
    }


class _GrpcSink(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    """A minimal OTLP/gRPC collector: keeps the raw export requests."""

    def __init__(self) -> None:
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # both services share the method name
        with self.lock:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self.traces.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()
            self.metrics.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()


def test_otlp_grpc_export_reaches_a_grpc_collector() -> None:
    collector = _GrpcSink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        settings = TelemetrySettings(
            traces="otlp-grpc", metrics="otlp-grpc", endpoint=f"http://127.0.0.1:{port}"
        )
        telemetry = build_providers(settings)
        with telemetry.tracer("broker.test").start_as_current_span("keys.sign") as span:
            span.set_attribute("kid", DID)
            span.set_attribute("pin", "1234")
        telemetry.metrics.record_sign(0.002, "CKM_ECDSA")
        telemetry.shutdown()
    finally:
        server.stop(None)
    spans = [
        s
        for req in collector.traces
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    assert [s.name for s in spans] == ["keys.sign"]
    attrs = {a.key: a.value.string_value for a in spans[0].attributes}
    assert attrs == {"kid": DID, "pin": "[REDACTED]"}
    metric_names = {
        m.name
        for req in collector.metrics
        for rm in req.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert "broker.hsm.sign.duration" in metric_names


def test_console_exporters_write_to_the_given_stream() -> None:
    out = io.StringIO()
    telemetry = build_providers(
        TelemetrySettings(traces="console", metrics="console"), console_out=out
    )
    with telemetry.tracer("broker.test").start_as_current_span("tokens.get") as span:
        span.set_attribute("access_token", JWT)
    telemetry.metrics.record_cache_hit()
    telemetry.shutdown()
    text = out.getvalue()
    assert '"name": "tokens.get"' in text
    assert "broker.token.cache.hits" in text
    assert JWT not in text


def test_off_exports_nothing_but_spans_still_have_ids(sink: OtlpSink) -> None:
    telemetry = build_providers(TelemetrySettings(traces="off", metrics="off"))
    with telemetry.tracer("broker.test").start_as_current_span("tokens.get") as span:
        assert span.get_span_context().is_valid
    assert telemetry.force_flush()
    telemetry.shutdown()
    assert sink.raw_bodies == []


def test_install_global_sets_providers_and_w3c_propagators() -> None:
    """In a child process: global providers can be set only once per process."""
    code = textwrap.dedent(
        """
        from opentelemetry import metrics, propagate, trace
        from broker.telemetry.settings import TelemetrySettings
        from broker.telemetry import build_providers, install_global

        t = build_providers(TelemetrySettings())
        assert trace.get_tracer_provider() is not t.tracer_provider
        install_global(t)
        assert trace.get_tracer_provider() is t.tracer_provider
        assert metrics.get_meter_provider() is t.meter_provider
        fields = propagate.get_global_textmap().fields
        assert {"traceparent", "tracestate", "baggage"} <= set(fields), fields
        carrier = {}
        with trace.get_tracer("broker.x").start_as_current_span("s"):
            propagate.inject(carrier)
        assert carrier["traceparent"].startswith("00-"), carrier
        t.shutdown()
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
