"""``httpx.Auth`` that sends the broker's token (needs the ``httpx`` extra).

Each request gets ``Authorization: Bearer <token>`` from a token source; a ``401`` answer is
retried once with a token asked of the broker again (``refresh``). A second ``401`` is returned
to the caller as it is. Works with ``httpx.Client`` (a :class:`TokenSource`) and
``httpx.AsyncClient`` (an :class:`AsyncTokenSource`, or a :class:`TokenSource` run in a worker
thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator

import httpx

from broker_client.async_token_source import AsyncTokenSource
from broker_client.token import AccessToken
from broker_client.token_source import TokenSource

UNAUTHORIZED = 401


class BrokerAuth(httpx.Auth):
    """Bearer authentication from a broker token source, with one retry on 401."""

    requires_request_body = True  # the body is sent twice when the retry happens

    def __init__(self, source: TokenSource | AsyncTokenSource) -> None:
        self.source = source

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        source = self.source
        if not isinstance(source, TokenSource):
            raise TypeError(
                "a synchronous httpx client needs a TokenSource, not an AsyncTokenSource"
            )
        token = source.token()
        response = yield _authorized(request, token)
        if response.status_code == UNAUTHORIZED:
            response.read()
            yield _authorized(request, source.refresh(token))

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._token()
        response = yield _authorized(request, token)
        if response.status_code == UNAUTHORIZED:
            await response.aread()
            yield _authorized(request, await self._refresh(token))

    async def _token(self) -> AccessToken:
        if isinstance(self.source, AsyncTokenSource):
            return await self.source.token()
        return await asyncio.to_thread(self.source.token)

    async def _refresh(self, rejected: AccessToken) -> AccessToken:
        if isinstance(self.source, AsyncTokenSource):
            return await self.source.refresh(rejected)
        return await asyncio.to_thread(self.source.refresh, rejected)


def _authorized(request: httpx.Request, token: AccessToken) -> httpx.Request:
    request.headers["Authorization"] = token.authorization
    return request
