"""The shape of the broker's server interceptors: each method's handler wrapped once.

gRPC's aio server asks every interceptor for a handler on each call. A
:class:`WrappingInterceptor` wraps the handler of a method once and hands back the same wrapper
while gRPC hands back the same handler object (so per call only the wrapper's own work runs);
methods under ``unwrapped_prefixes`` get the handler unchanged. :func:`rewrap` rebuilds a
handler of any of the four kinds around a new behaviour, keeping its (de)serialisers.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

UnaryBehavior = Callable[[Any, Any], Awaitable[Any]]
"""``(request or request iterator, context) -> response``: unary and client-streaming calls."""
StreamBehavior = Callable[[Any, Any], AsyncIterator[Any]]
"""``(request or request iterator, context) -> responses``: server- and bidi-streaming calls
(async generators, as the broker's and grpcio-reflection's aio servicers are)."""


def rewrap(
    handler: Any,
    *,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    stream: Callable[[StreamBehavior], StreamBehavior],
) -> Any:
    """``handler`` (a ``grpc.RpcMethodHandler``) with its behaviour replaced by ``unary(b)`` for
    a single-response call or ``stream(b)`` for a streaming one."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **serializers)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **serializers)


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """An interceptor that wraps each method's handler once (:meth:`wrap`), cached per method.

    An abstract class (``grpc.aio.ServerInterceptor`` is one). It runs on the server's event loop
    only, so the cache needs no lock.
    """

    unwrapped_prefixes: tuple[str, ...] = ()
    """Methods (``/package.Service/Method``) starting with one of these are passed through."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    @abc.abstractmethod
    def wrap(self, method: str, handler: Any) -> Any:
        """The handler to serve ``method`` with instead of ``handler``."""

    def forget_wrapped(self) -> None:
        """Drop the cached wrappers: the next call of each method wraps its handler again."""
        self._wrapped.clear()

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(self.unwrapped_prefixes):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
