"""The shared interceptor shape (broker.server.interceptors): one wrapper per method, rebuilt only
when gRPC hands over another handler; every handler kind rebuilt around the new behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from broker.server.interceptors import (
    StreamBehavior,
    UnaryBehavior,
    WrappingInterceptor,
    rewrap,
)


@dataclass(frozen=True)
class Details:
    method: str


class Recording(WrappingInterceptor):
    unwrapped_prefixes = ("/grpc.health.v1.Health/",)

    def __init__(self) -> None:
        super().__init__()
        self.wrapped: list[str] = []

    def wrap(self, method: str, handler: Any) -> Any:
        self.wrapped.append(method)
        return ("wrapped", handler)


async def _unary(request: Any, context: Any) -> Any:
    return ("reply", request)


async def _stream(request: Any, context: Any) -> AsyncIterator[Any]:
    yield ("item", request)


def _serialize(message: Any) -> bytes:
    return b""


def _deserialize(raw: bytes) -> Any:
    return raw


def _handlers() -> dict[str, Any]:
    io = {"request_deserializer": _deserialize, "response_serializer": _serialize}
    return {
        "unary_unary": grpc.unary_unary_rpc_method_handler(_unary, **io),
        "unary_stream": grpc.unary_stream_rpc_method_handler(_stream, **io),
        "stream_unary": grpc.stream_unary_rpc_method_handler(_unary, **io),
        "stream_stream": grpc.stream_stream_rpc_method_handler(_stream, **io),
    }


async def test_each_method_is_wrapped_once_per_handler_object() -> None:
    interceptor = Recording()
    first, second = _handlers()["unary_unary"], _handlers()["unary_unary"]
    current = {"/broker.v1.TokenBroker/GetGrant": first, "/broker.v1.TokenBroker/ListGrants": first}

    async def continuation(details: Details) -> Any:
        return current.get(details.method)

    get, listing = (
        Details("/broker.v1.TokenBroker/GetGrant"),
        Details("/broker.v1.TokenBroker/ListGrants"),
    )
    a = await interceptor.intercept_service(continuation, get)
    assert a == ("wrapped", first)
    assert await interceptor.intercept_service(continuation, get) is a
    assert await interceptor.intercept_service(continuation, listing) == ("wrapped", first)
    assert interceptor.wrapped == [get.method, listing.method]

    current[get.method] = second  # gRPC hands over another handler: wrapped anew
    assert await interceptor.intercept_service(continuation, get) == ("wrapped", second)
    assert interceptor.wrapped == [get.method, listing.method, get.method]

    interceptor.forget_wrapped()
    again = await interceptor.intercept_service(continuation, get)
    assert again == ("wrapped", second) and again is not a
    assert interceptor.wrapped[-1] == get.method


async def test_unknown_methods_and_unwrapped_prefixes_pass_through() -> None:
    interceptor = Recording()
    health = _handlers()["unary_unary"]

    async def continuation(details: Details) -> Any:
        return health if details.method.startswith("/grpc.health") else None

    assert await interceptor.intercept_service(continuation, Details("/x.Y/Z")) is None
    check = Details("/grpc.health.v1.Health/Check")
    assert await interceptor.intercept_service(continuation, check) is health
    assert interceptor.wrapped == []


@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream", "stream_unary", "stream_stream"])
async def test_rewrap_keeps_the_kind_and_serialisers_and_wraps_the_behaviour(kind: str) -> None:
    handler = _handlers()[kind]
    applied: list[str] = []

    def unary(behavior: UnaryBehavior) -> UnaryBehavior:
        async def call(request: Any, context: Any) -> Any:
            applied.append("unary")
            return await behavior(request, context)

        return call

    def stream(behavior: StreamBehavior) -> StreamBehavior:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            applied.append("stream")
            async for item in behavior(request, context):
                yield item

        return call

    new = rewrap(handler, unary=unary, stream=stream)
    assert (new.request_streaming, new.response_streaming) == (
        handler.request_streaming,
        handler.response_streaming,
    )
    assert new.request_deserializer is _deserialize
    assert new.response_serializer is _serialize
    behavior = getattr(new, kind)
    assert behavior is not None and behavior is not getattr(handler, kind)
    if handler.response_streaming:
        assert [item async for item in behavior("r", None)] == [("item", "r")]
        assert applied == ["stream"]
    else:
        assert await behavior("r", None) == ("reply", "r")
        assert applied == ["unary"]
