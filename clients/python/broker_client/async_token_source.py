"""``AsyncTokenSource``: the current access token of one grant, for asyncio code.

Like :class:`~broker_client.token_source.TokenSource`, with an asyncio task instead of a thread:
the task keeps a ``WatchAccessToken`` stream open; :meth:`AsyncTokenSource.token` serves the
cached token while it is valid for more than ``margin`` seconds, else awaits ``GetAccessToken``.
An expired token, or one inside the margin, is never returned. Use it from one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import grpc

from broker_client.backoff import DEFAULT_BACKOFF, Backoff
from broker_client.channel import aio_secure_channel
from broker_client.client import AsyncBrokerClient
from broker_client.errors import BrokerClientError, SourceClosed
from broker_client.token import DEFAULT_MARGIN, AccessToken, newer
from broker_client.token_source import check_usable, fetch_min_ttl

log = logging.getLogger("broker_client")


class AsyncTokenSource:
    """Keeps the current token of ``grant_id``. Create it inside a running event loop;
    ``await close()`` or use ``async with``."""

    def __init__(
        self,
        client: AsyncBrokerClient,
        grant_id: str,
        *,
        margin: float = DEFAULT_MARGIN,
        watch: bool = True,
        backoff: Backoff = DEFAULT_BACKOFF,
        clock: Callable[[], float] = time.time,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        if margin < 0:
            raise ValueError("margin must not be negative")
        self.grant_id = grant_id
        self.margin = margin
        self._client = client
        self._backoff = backoff
        self._clock = clock
        self._channel = channel
        self._fetch_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._current: AccessToken | None = None
        self._watching = False
        self._task: asyncio.Task[None] | None = None
        if watch:
            self._task = asyncio.get_running_loop().create_task(
                self._watch_loop(), name=f"broker-watch-{grant_id}"
            )

    @classmethod
    def connect(
        cls,
        target: str,
        grant_id: str,
        *,
        ca: str | Path,
        cert: str | Path,
        key: str | Path,
        server_name: str | None = None,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> AsyncTokenSource:
        """A source on its own mTLS channel to ``target``, closed with the source."""
        channel = aio_secure_channel(target, ca=ca, cert=cert, key=key, server_name=server_name)
        return cls(
            AsyncBrokerClient(channel), grant_id, margin=margin, clock=clock, channel=channel
        )

    @property
    def cached(self) -> AccessToken | None:
        return self._current

    @property
    def watching(self) -> bool:
        return self._watching

    async def token(self) -> AccessToken:
        """A token valid for more than ``margin`` seconds; awaits ``GetAccessToken`` when the
        cache has none. Raises :class:`~broker_client.errors.BrokerClientError`."""
        self._check_open()
        current = self._current
        if current is not None and current.usable(self._clock(), self.margin):
            return current
        async with self._fetch_lock:
            current = self._current
            if current is not None and current.usable(self._clock(), self.margin):
                return current
            fetched = await self._fetch()
            self._current = newer(self._current, fetched)
            return self._current

    async def refresh(self, rejected: AccessToken | None = None) -> AccessToken:
        """Ask the broker again (after a 401 for ``rejected``); see ``TokenSource.refresh``."""
        self._check_open()
        async with self._fetch_lock:
            current = self._current
            if (
                rejected is not None
                and current is not None
                and current.access_token != rejected.access_token
                and current.usable(self._clock(), self.margin)
            ):
                return current
            fetched = await self._fetch()
            self._current = fetched
            return fetched

    async def _fetch(self) -> AccessToken:
        fetched = await self._client.get_access_token(
            self.grant_id, min_ttl=fetch_min_ttl(self.margin)
        )
        return check_usable(fetched, self._clock(), self.margin)

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise SourceClosed(f"token source for grant {self.grant_id} is closed")

    async def _watch_loop(self) -> None:
        delay: float | None = None
        while not self._closed.is_set():
            retryable = True
            try:
                async for tok in self._client.watch_access_token(self.grant_id):
                    self._current = newer(self._current, tok)
                    self._watching = True
                    delay = None
            except BrokerClientError as exc:
                retryable = exc.retryable
                log.warning(
                    "broker watch stream for grant %s failed: %s (%s); serving from "
                    "GetAccessToken until it is back",
                    self.grant_id,
                    type(exc).__name__,
                    exc.reason or (exc.code.name if exc.code else "-"),
                )
            finally:
                self._watching = False
            delay = self._backoff.next(delay, retryable=retryable)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), Backoff.jittered(delay))

    async def close(self) -> None:
        """Stop the watch task (and close the channel :meth:`connect` opened). Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncTokenSource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
