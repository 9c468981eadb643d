"""A server interceptor that opens one span per RPC and continues the caller's trace.

The W3C ``traceparent``/``tracestate`` (and baggage) are extracted from the incoming metadata
with the configured propagator (``opentelemetry.propagate.extract``), so the server span is a
child of the caller's span. Attributes follow the OpenTelemetry RPC conventions and hold no
secret: system, service, method, status code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

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


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps each method handler once (cached per method); per call only the span work runs."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_UNTRACED_PREFIXES):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        tracer = self._tracer
        span_name = f"{service}/{name}"

        def start(context: Any) -> Any:
            carrier = {
                str(k): v for k, v in context.invocation_metadata() or () if isinstance(v, str)
            }
            return tracer.start_as_current_span(
                span_name,
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )

        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                with start(context) as span:
                    try:
                        return await behavior(request, context)
                    finally:
                        _finish(span, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream_behavior = handler.unary_stream

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                with start(context) as span:
                    try:
                        async for item in stream_behavior(request, context):
                            yield item
                    finally:
                        _finish(span, context)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _finish(span: trace.Span, context: Any) -> None:
    code = context.code() or grpc.StatusCode.OK
    if isinstance(code, int):  # some grpc versions report the raw integer
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    span.set_attribute("rpc.grpc.status_code", int(code.value[0]))
    if code in _ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, code.name))
