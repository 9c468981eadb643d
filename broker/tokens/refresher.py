"""The background refresher: wakes every ``interval`` seconds and refreshes the grants that are
due, a few at a time, through the token core's single-flight path.

It knows nothing about grants or freshness: the token core gives it ``find_due`` (which grants to
refresh now; per-grant jitter lives there, so N grants expiring together become due at different
wake-ups: J02) and ``refresh_one`` (the single-flight refresh, which records its own failures).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from broker.errors import BrokerError

_log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class BackgroundRefresher:
    def __init__(
        self,
        find_due: Callable[[], Awaitable[list[str]]],
        refresh_one: Callable[[str], Awaitable[object]],
        *,
        interval: float,
        concurrency: int = 4,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if interval <= 0:
            raise ValueError("background interval must be positive")
        if concurrency < 1:
            raise ValueError("background concurrency must be at least 1")
        self._find_due = find_due
        self._refresh_one = refresh_one
        self._interval = interval
        self._sleep = sleep
        self._semaphore = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="token-refresher")

    async def stop(self) -> None:
        """Stop waking up. Refreshes already started are shielded by the token core and keep
        running; the core's ``wait_idle`` waits for them."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # our own caller is being cancelled
                raise

    async def _run(self) -> None:
        while True:
            await self._sleep(self._interval)
            try:
                await self.run_once()
            except BrokerError as exc:
                # e.g. the store is unreachable: try again at the next wake-up
                _log.warning("background refresh pass failed: %s", exc.reason)

    async def run_once(self) -> int:
        """One pass: refresh every due grant, at most ``concurrency`` at a time. Returns the
        number of grants it tried."""
        due = await self._find_due()
        if not due:
            return 0
        await asyncio.gather(*(self._one(grant_id) for grant_id in due))
        return len(due)

    async def _one(self, grant_id: str) -> None:
        async with self._semaphore:
            try:
                await self._refresh_one(grant_id)
            except BrokerError as exc:
                # already recorded by the token core (store.record_error / status change)
                _log.info("background refresh of grant %s failed: %s", grant_id, exc.reason)
