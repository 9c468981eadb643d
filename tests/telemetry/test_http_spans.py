"""Outbound HTTP to the AS: one CLIENT span and one ``http.client.request.duration`` point per
request, per the OpenTelemetry HTTP semantic conventions, against a real local HTTP server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from broker.errors import AuthServerUnavailable, UnexpectedResponse
from broker.oauth import http as bounded

SECRET_CODE = "550e8400-e29b-41d4-a716-446655440000"


@dataclass
class Peer:
    server: ThreadingHTTPServer
    traceparents: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def peer() -> Iterator[Peer]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.headers.get("traceparent", ""))
            status, body = {
                "/token": (200, {"access_token": "x", "token_type": "Bearer"}),
                "/bad": (400, {"error": "invalid_grant"}),
                "/big": (200, {"pad": "p" * 4096}),
            }.get(self.path.split("?", 1)[0], (404, {}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Peer(server, seen)
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Recorded:
    telemetry: bounded.HttpTelemetry
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider

    def span(self) -> ReadableSpan:
        (span,) = self.spans.get_finished_spans()
        return span

    def durations(self) -> list[tuple[str, dict[str, Any], int]]:
        data = self.reader.get_metrics_data()
        assert data is not None
        out: list[tuple[str, dict[str, Any], int]] = []
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points if m.name == "http.client.request.duration" else ():
                        assert isinstance(p, HistogramDataPoint)
                        out.append((m.unit or "", dict(p.attributes or {}), p.count))
        return out


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Recorded(
        bounded.HttpTelemetry.of(tracer_provider, meter_provider), spans, reader, tracer_provider
    )
    tracer_provider.shutdown()
    meter_provider.shutdown()


async def _post(url: str, recorded: Recorded, *, max_bytes: int = 65536) -> bounded.HttpResponse:
    async with httpx.AsyncClient() as http:
        return await bounded.request(
            http,
            "POST",
            url,
            data={"code": SECRET_CODE},
            timeout=10.0,
            max_bytes=max_bytes,
            telemetry=recorded.telemetry,
        )


async def test_ok_request_is_a_client_span_named_by_its_method(
    peer: Peer, recorded: Recorded
) -> None:
    port = peer.server.server_address[1]
    resp = await _post(f"{peer.base}/token?code={SECRET_CODE}#frag", recorded)
    assert resp.status_code == 200
    span = recorded.span()
    assert span.name == "POST"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": port,
        "url.full": f"{peer.base}/token",
        "http.response.status_code": 200,
    }
    # The request carried this span's context (the HTTP span is the parent of the AS's work).
    (traceparent,) = peer.traceparents
    assert traceparent.split("-")[2] == format(span.context.span_id, "016x")
    assert recorded.durations() == [
        (
            "s",
            {
                "http.request.method": "POST",
                "server.address": "127.0.0.1",
                "server.port": port,
                "http.response.status_code": 200,
            },
            1,
        )
    ]


async def test_4xx_answer_sets_error_type_to_the_status_code(
    peer: Peer, recorded: Recorded
) -> None:
    resp = await _post(f"{peer.base}/bad", recorded)
    assert resp.status_code == 400
    span = recorded.span()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "400"
    ((_, attrs, _),) = recorded.durations()
    assert attrs["error.type"] == "400" and attrs["http.response.status_code"] == 400


async def test_transport_failure_sets_error_type_without_a_status(recorded: Recorded) -> None:
    with pytest.raises(AuthServerUnavailable):
        await _post(f"http://127.0.0.1:{closed_port()}/token", recorded)
    span = recorded.span()
    assert span.kind is SpanKind.CLIENT and span.status.status_code is StatusCode.ERROR
    attrs = dict(span.attributes or {})
    assert attrs["error.type"] == "ConnectError"
    assert "http.response.status_code" not in attrs
    ((unit, mattrs, count),) = recorded.durations()
    assert (unit, mattrs["error.type"], count) == ("s", "ConnectError", 1)


async def test_oversized_body_is_an_error_with_its_status(peer: Peer, recorded: Recorded) -> None:
    with pytest.raises(UnexpectedResponse):
        await _post(f"{peer.base}/big", recorded, max_bytes=1024)
    attrs = dict(recorded.span().attributes or {})
    assert attrs["error.type"] == "response_too_large"
    assert attrs["http.response.status_code"] == 200


@pytest.mark.parametrize(
    ("url", "full"),
    [
        ("https://as.example/oidc/token", "https://as.example/oidc/token"),
        ("https://as.example/par?request=abc.def.ghi", "https://as.example/par"),
        ("https://user:pw@as.example:8443/jwks#x", "https://as.example:8443/jwks"),
        ("not a url \x00", ""),
    ],
)
def test_url_full_has_no_query_fragment_or_user_info(url: str, full: str) -> None:
    assert bounded.url_full_of(url) == full


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
