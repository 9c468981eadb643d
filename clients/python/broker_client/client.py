"""Thin typed wrappers over the generated stub: broker errors become :mod:`broker_client.errors`,
tokens become :class:`~broker_client.token.AccessToken`. ``stub`` gives the other RPCs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from broker_client.errors import from_rpc_error
from broker_client.gen.broker.v1 import broker_pb2 as pb
from broker_client.gen.broker.v1 import broker_pb2_grpc
from broker_client.token import AccessToken

DEFAULT_TIMEOUT = 10.0
MAX_MIN_TTL = 3600.0  # the broker refuses a longer min_ttl


def _token_request(grant_id: str, min_ttl: float) -> pb.GetAccessTokenRequest:
    if not 0 <= min_ttl <= MAX_MIN_TTL:
        raise ValueError(f"min_ttl must be between 0 and {MAX_MIN_TTL:.0f} seconds")
    request = pb.GetAccessTokenRequest(grant_id=grant_id)
    if min_ttl:
        request.min_ttl.FromNanoseconds(round(min_ttl * 1_000_000_000))
    return request


class TokenStream:
    """The tokens of one ``WatchAccessToken`` call (blocking iterator); ``cancel()`` ends it."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[AccessToken]:
        try:
            for response in self._call:
                yield AccessToken.from_proto(response.token)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def cancel(self) -> None:
        self._call.cancel()


class AsyncTokenStream:
    """The tokens of one ``WatchAccessToken`` call on a ``grpc.aio`` channel."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def __aiter__(self) -> AsyncIterator[AccessToken]:
        try:
            async for response in self._call:
                yield AccessToken.from_proto(response.token)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def cancel(self) -> None:
        self._call.cancel()


class BrokerClient:
    """The broker's API on a blocking channel (:func:`broker_client.channel.secure_channel`)."""

    def __init__(self, channel: grpc.Channel, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.stub: Any = broker_pb2_grpc.TokenBrokerStub(channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    def get_access_token(
        self, grant_id: str, *, min_ttl: float = 0.0, timeout: float | None = None
    ) -> AccessToken:
        """A token for the grant valid at least ``min_ttl`` seconds (the broker refreshes first
        when needed)."""
        request = _token_request(grant_id, min_ttl)
        try:
            response = self.stub.GetAccessToken(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return AccessToken.from_proto(response.token)

    def watch_access_token(self, grant_id: str) -> TokenStream:
        """The grant's token now and at each renewal, until cancelled or the stream fails."""
        return TokenStream(
            self.stub.WatchAccessToken(pb.WatchAccessTokenRequest(grant_id=grant_id))
        )


class AsyncBrokerClient:
    """The broker's API on a ``grpc.aio`` channel (:func:`broker_client.channel.aio_secure_channel`)."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.stub: Any = broker_pb2_grpc.TokenBrokerStub(channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    async def get_access_token(
        self, grant_id: str, *, min_ttl: float = 0.0, timeout: float | None = None
    ) -> AccessToken:
        request = _token_request(grant_id, min_ttl)
        try:
            response = await self.stub.GetAccessToken(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return AccessToken.from_proto(response.token)

    def watch_access_token(self, grant_id: str) -> AsyncTokenStream:
        return AsyncTokenStream(
            self.stub.WatchAccessToken(pb.WatchAccessTokenRequest(grant_id=grant_id))
        )
