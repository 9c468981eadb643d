"""A tiny in-process OTLP/HTTP collector: receives the real exporters' output.

Used by ``make demo`` (to print the acquisition trace as a tree) and by the telemetry tests (to
scan every span, event, metric label and log record for secrets). Accepts protobuf
``POST /v1/traces``, ``/v1/metrics`` and ``/v1/logs`` (OTLP/HTTP, RFC-free but spec'd by
opentelemetry-proto), keeps everything in memory, and answers 200 with an empty export response.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class SinkSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    status: str
    kind: str = "SPAN_KIND_UNSPECIFIED"
    """OTLP span kind name: ``SPAN_KIND_SERVER``, ``SPAN_KIND_CLIENT``, ``SPAN_KIND_INTERNAL``..."""

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _hex_id(value: str) -> str:
    """OTLP JSON mapping renders ids as base64; show them as W3C hex."""
    return base64.b64decode(value).hex() if value else ""


def _attr_value(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        return value
    kind, inner = next(iter(value.items()))
    if kind == "arrayValue":
        return [_attr_value(v) for v in inner.get("values", [])]
    if kind == "intValue":
        return int(inner)
    return inner


def _attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {a["key"]: _attr_value(a.get("value", {})) for a in items}


@dataclass
class OtlpSink:
    """Start with :meth:`start`; ``endpoint`` is the base URL for OTLP/HTTP exporters."""

    host: str = "127.0.0.1"
    port: int = 0
    spans: list[SinkSpan] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    raw_bodies: list[bytes] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> OtlpSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY:
                    self.send_response(413)
                    self.end_headers()
                    return
                body = self.rfile.read(length)
                try:
                    sink._ingest(self.path, body)
                except Exception:  # a malformed export must not kill the sink
                    self.send_response(400)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _ingest(self, path: str, body: bytes) -> None:
        with self._lock:
            self.raw_bodies.append(body)
        if path.endswith("/v1/traces"):
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            self._add_spans(MessageToDict(req))
        elif path.endswith("/v1/metrics"):
            mreq = metrics_service_pb2.ExportMetricsServiceRequest()
            mreq.ParseFromString(body)
            with self._lock:
                self.metrics.append(MessageToDict(mreq))
        elif path.endswith("/v1/logs"):
            lreq = logs_service_pb2.ExportLogsServiceRequest()
            lreq.ParseFromString(body)
            with self._lock:
                self.logs.append(MessageToDict(lreq))
        else:
            raise ValueError("unknown OTLP path")

    def _add_spans(self, doc: dict[str, Any]) -> None:
        found: list[SinkSpan] = []
        for rs in doc.get("resourceSpans", []):
            service = str(
                _attrs(rs.get("resource", {}).get("attributes", [])).get("service.name", "?")
            )
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    found.append(
                        SinkSpan(
                            trace_id=_hex_id(s.get("traceId", "")),
                            span_id=_hex_id(s.get("spanId", "")),
                            parent_span_id=_hex_id(s.get("parentSpanId", "")),
                            name=s.get("name", ""),
                            service=service,
                            start_ns=int(s.get("startTimeUnixNano", 0)),
                            end_ns=int(s.get("endTimeUnixNano", 0)),
                            attributes=_attrs(s.get("attributes", [])),
                            events=[
                                {
                                    "name": e.get("name", ""),
                                    "attributes": _attrs(e.get("attributes", [])),
                                }
                                for e in s.get("events", [])
                            ],
                            status=s.get("status", {}).get("code", "STATUS_CODE_UNSET"),
                            kind=s.get("kind", "SPAN_KIND_UNSPECIFIED"),
                        )
                    )
        with self._lock:
            self.spans.extend(found)

    def traces(self) -> dict[str, list[SinkSpan]]:
        with self._lock:
            spans = list(self.spans)
        out: dict[str, list[SinkSpan]] = {}
        for s in spans:
            out.setdefault(s.trace_id, []).append(s)
        return out


def render_tree(spans: list[SinkSpan], *, attributes: tuple[str, ...] = ()) -> str:
    """Render one trace as an indented tree, children ordered by start time."""
    by_parent: dict[str, list[SinkSpan]] = {}
    ids = {s.span_id for s in spans}
    for s in spans:
        parent = s.parent_span_id if s.parent_span_id in ids else ""
        by_parent.setdefault(parent, []).append(s)

    def walk(parent: str, depth: int) -> Iterator[str]:
        for s in sorted(by_parent.get(parent, []), key=lambda x: x.start_ns):
            shown = {k: v for k, v in s.attributes.items() if not attributes or k in attributes}
            extra = " ".join(f"{k}={v}" for k, v in sorted(shown.items()))
            mark = " [ERROR]" if s.status == "STATUS_CODE_ERROR" else ""
            yield f"{'  ' * depth}{s.name} ({s.service}, {s.duration_ms:.1f} ms){mark} {extra}".rstrip()
            yield from walk(s.span_id, depth + 1)

    return "\n".join(walk("", 0))
