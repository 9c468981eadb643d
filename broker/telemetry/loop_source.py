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

:meth:`LoopSource.detach` (at stop, before the store closes) makes every later collection
report nothing, silently, and waits for the query in flight: a periodic export landing between
the store's close and the loop's end neither queries a closed store nor logs a failure.
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
        self._detached = False
        self._asking: set[asyncio.Task[int]] = set()  # touched on the loop only

    def __repr__(self) -> str:
        return f"LoopSource({self._name!r})"

    def __call__(self) -> int | None:
        if self._detached or self._loop.is_closed() or _running_loop() is self._loop:
            return None

        async def ask() -> int:
            # On the loop, like detach(): either detach() sees this query and waits for it,
            # or this query sees detach() and never touches the store.
            if self._detached:
                raise _Detached
            task = asyncio.current_task()
            assert task is not None
            self._asking.add(task)
            try:
                return await self._query()
            finally:
                self._asking.discard(task)

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
        except (concurrent.futures.CancelledError, _Detached):
            return None  # the loop is shutting down, or the store is closing
        except Exception as exc:  # the exporter must never see a store error
            self._failed(type(exc).__name__)
            return None
        with self._state:
            if self._failing:
                _log.info("gauge %s: the store answers again", self._name)
            self._failing = False
        return value

    async def detach(self) -> None:
        """Report nothing from now on, silently; returns once the query in flight (if any)
        has ended, so the store can close under no query. Call on the loop."""
        self._detached = True
        asking = [t for t in self._asking if t is not asyncio.current_task()]
        if asking:
            await asyncio.wait(asking)

    def _failed(self, what: str) -> None:
        if self._detached:
            return  # stopping: the store may be closed under a late query
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


class _Detached(Exception):
    """A query asked after :meth:`LoopSource.detach`: not run."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
