"""A server interceptor that opens one span per RPC, continues the caller's trace and records
``rpc.server.duration``.

The W3C ``traceparent``/``tracestate`` (and baggage) are extracted from the incoming metadata
with the configured propagator (``opentelemetry.propagate.extract``), so the server span is a
child of the caller's span. ``opentelemetry-instrumentation-grpc`` is not a dependency; its
conventions (OpenTelemetry RPC semantic conventions) are followed by hand:

* span ``{package.Service}/{Method}``, kind SERVER; attributes ``rpc.system=grpc``,
  ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code`` (int), ``server.address`` /
  ``server.port`` once the listener is bound (:meth:`TracingInterceptor.bound`), and the
  caller's ``network.peer.address`` / ``network.peer.port`` (from ``context.peer()``);
* status ERROR only for the server-side error codes (UNKNOWN, DEADLINE_EXCEEDED,
  UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); a denied or unknown-grant call is not an
  error of the server;
* histogram ``rpc.server.duration`` in ``ms`` with the span's attributes minus the peer's
  (unbounded cardinality).

Nothing here is secret: metadata values are read only by the propagator.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from broker.server.interceptors import (
    StreamBehavior,
    UnaryBehavior,
    WrappingInterceptor,
    rewrap,
)
from broker.telemetry import instruments

# Server-side codes that mark a span as an error (OpenTelemetry RPC semantic conventions).
_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_UNTRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})  # noqa: S104 (compared, not bound)


def server_address_of(bind: str, port: int) -> dict[str, str | int]:
    """``server.address`` / ``server.port`` of a listener bound at ``bind`` (``host:port``) on
    ``port``; a wildcard host is not an address a client uses, so it is left out."""
    host = bind.rsplit(":", 1)[0].removeprefix("[").removesuffix("]")
    attributes: dict[str, str | int] = {"server.port": port}
    if host not in _WILDCARD_HOSTS:
        attributes["server.address"] = host
    return attributes


def peer_attributes(peer: str | None) -> dict[str, str | int]:
    """``network.peer.address`` / ``network.peer.port`` of a gRPC peer string
    (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:/path``)."""
    if not peer:
        return {}
    scheme, _, rest = peer.partition(":")
    if scheme in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        out: dict[str, str | int] = {"network.peer.address": host}
        if port.isdigit():
            out["network.peer.port"] = int(port)
        return out
    if scheme == "unix":
        return {"network.peer.address": rest}
    return {}


class TracingInterceptor(WrappingInterceptor):
    """Wraps each method handler once (cached per method); per call only the span work runs.
    Client-streaming methods (the broker has none) are passed through untraced."""

    unwrapped_prefixes = _UNTRACED_PREFIXES

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter | None = None) -> None:
        super().__init__()
        self._tracer = tracer
        self._duration = instruments.create(
            meter if meter is not None else metrics.get_meter("broker.server"),
            instruments.RPC_SERVER_DURATION,
        )
        self._server: dict[str, str | int] = {}

    def bound(self, bind: str, port: int) -> None:
        """Record the listener's address once it is bound (before the first call is served)."""
        self._server = server_address_of(bind, port)
        self.forget_wrapped()

    def wrap(self, method: str, handler: Any) -> Any:
        if handler.request_streaming:
            return handler
        service, _, name = method.lstrip("/").partition("/")
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            **self._server,
        }
        tracer = self._tracer
        duration = self._duration
        span_name = f"{service}/{name}"

        def start(context: Any) -> Any:
            carrier = {
                str(k): v for k, v in context.invocation_metadata() or () if isinstance(v, str)
            }
            return tracer.start_as_current_span(
                span_name,
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes={**attributes, **peer_attributes(context.peer())},
                record_exception=False,
                set_status_on_exception=False,
            )

        def finish(span: trace.Span, context: Any, started: float) -> None:
            code = _finish(span, context)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            duration.record(elapsed_ms, {**attributes, "rpc.grpc.status_code": code})

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def traced(request: Any, context: Any) -> Any:
                started = time.perf_counter()
                with start(context) as span:
                    try:
                        return await behavior(request, context)
                    finally:
                        finish(span, context, started)

            return traced

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def traced(request: Any, context: Any) -> AsyncIterator[Any]:
                started = time.perf_counter()
                with start(context) as span:
                    try:
                        async for item in behavior(request, context):
                            yield item
                    finally:
                        finish(span, context, started)

            return traced

        return rewrap(handler, unary=unary, stream=stream)


def _finish(span: trace.Span, context: Any) -> int:
    """Set the status code attribute (and ERROR status for server errors); return the code."""
    code = context.code() or grpc.StatusCode.OK
    if isinstance(code, int):  # some grpc versions report the raw integer
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    value = int(code.value[0])
    span.set_attribute("rpc.grpc.status_code", value)
    if code in _ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, code.name))
    return value
