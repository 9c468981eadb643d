"""Per-grant watcher queues for :meth:`broker.tokens.broker.TokenBroker.watch`.

Each watcher has a bounded queue; when it is full the oldest item is dropped, so a slow watcher
skips intermediate tokens and always gets the newest. A dead grant ends every watcher with the
error class its next read raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable

from broker.errors import ReauthorizationRequired
from broker.tokens.model import AccessToken

WatchItem = AccessToken | type[ReauthorizationRequired]


class Watchers:
    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._queues: dict[str, set[asyncio.Queue[WatchItem]]] = {}

    def count(self, grant_id: str | None = None) -> int:
        if grant_id is None:
            return sum(len(q) for q in self._queues.values())
        return len(self._queues.get(grant_id, ()))

    def wants(self, grant_id: str) -> bool:
        return bool(self._queues.get(grant_id))

    def publish(self, grant_id: str, item: WatchItem) -> None:
        for queue in self._queues.get(grant_id, ()):
            _put_newest(queue, item)

    async def stream(
        self, grant_id: str, current: Callable[[], Awaitable[AccessToken]]
    ) -> AsyncGenerator[AccessToken, None]:
        """Register first (so nothing published meanwhile is missed), yield ``current()``,
        then every published token that differs from the last one yielded."""
        queue: asyncio.Queue[WatchItem] = asyncio.Queue(self._queue_size)
        self._queues.setdefault(grant_id, set()).add(queue)
        try:
            last = await current()
            yield last
            while True:
                item = await queue.get()
                if isinstance(item, type):
                    raise item(f"grant {grant_id} needs re-authorization")
                if item.access_token == last.access_token:
                    continue
                last = item
                yield last
        finally:
            queues = self._queues.get(grant_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._queues[grant_id]


def _put_newest(queue: asyncio.Queue[WatchItem], item: WatchItem) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)
