"""A gauge source that asks an asyncio store from the metric exporter's thread.

Observable gauges are polled by the SDK's reader (``PeriodicExportingMetricReader``) on its own
thread, synchronously; the grant store is asyncio (SQLite on its worker thread, PostgreSQL on
the event loop's connections). :class:`LoopSource` runs one store query on the event loop
(:func:`asyncio.run_coroutine_threadsafe`) and waits for it on the exporter's thread, at most
``timeout`` seconds: the event loop never blocks, and the query holds a store connection only
for the one COUNT.

No observation (``None``) when the query fails, times out, or cannot be waited for: asked on the
event loop's own thread (waiting there would deadlock) or after the loop closed (the final
collection at shutdown). A failure is logged once, at WARNING, naming the gauge and the error
class; it is logged again only after a success. Nothing propagates to the exporter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0


class LoopSource:
    """``source()`` -> ``query()``'s value run on ``loop``, or ``None``."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        query: Callable[[], Awaitable[int]],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._name = name
        self._loop = loop
        self._query = query
        self._timeout = timeout
        self._failing = False
        self._state = threading.Lock()

    def __repr__(self) -> str:
        return f"LoopSource({self._name!r})"

    def __call__(self) -> int | None:
        if self._loop.is_closed() or _running_loop() is self._loop:
            return None

        async def ask() -> int:
            return await self._query()

        try:
            future = asyncio.run_coroutine_threadsafe(ask(), self._loop)
        except RuntimeError:  # the loop closed meanwhile
            return None
        try:
            value = int(future.result(self._timeout))
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._failed(f"no answer within {self._timeout:g} s")
            return None
        except concurrent.futures.CancelledError:
            return None  # the loop is shutting down
        except Exception as exc:  # the exporter must never see a store error
            self._failed(type(exc).__name__)
            return None
        with self._state:
            if self._failing:
                _log.info("gauge %s: the store answers again", self._name)
            self._failing = False
        return value

    def _failed(self, what: str) -> None:
        with self._state:
            first = not self._failing
            self._failing = True
        if first:
            _log.warning(
                "gauge %s: the store query failed (%s); not reported until it answers",
                self._name,
                what,
                extra={"gauge": self._name},
            )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
