"""Status changes made through other replicas reach this one's cache within a bound.

Every replica caches access tokens in memory. When a grant is revoked through replica A, or
ended by ``broker keys rotate retire --force`` or by a dead refresh token on A, A drops its
own cached token at once; the others learn it here: every ``status_interval`` seconds
(:class:`broker.tokens.settings.BackgroundPolicy`, ``[tokens] status_poll_interval``, 2 s by
default) one pass asks the store which grants changed status since the last pass
(:class:`broker.tokens.stores.changes.StatusFeed`: one indexed range query, nothing returned
when nothing changed) and buries the dead ones this replica caches, knows dead, or has watchers
for: later calls raise as on A (GrantRevoked, ReauthorizationRequired) and watch streams end
with that error. So a revocation is honoured by every replica within one interval plus one
query, as long as the store answers.

A store error is logged once (WARNING) and the pass is retried at the next wake-up (INFO when
the store answers again); the cursor is kept, so nothing changed meanwhile is missed. A store
without the feed (a test fake) gets no watcher. The first pass starts at cursor 0: it reads
every grant whose status ever changed (once), so nothing cached before the watcher started
can be missed.
"""

from __future__ import annotations

import asyncio
import logging

from broker.errors import BrokerError
from broker.tokens.cache import TokenCache
from broker.tokens.settings import Sleep
from broker.tokens.stores.base import GrantStore
from broker.tokens.stores.changes import StatusFeed

_log = logging.getLogger("broker.tokens.broker")  # the token core's log name


class StatusWatcher:
    def __init__(
        self, store: GrantStore, cache: TokenCache, *, interval: float, sleep: Sleep
    ) -> None:
        feed = store if callable(getattr(store, "status_changes", None)) else None
        self._feed: StatusFeed | None = feed  # type: ignore[assignment]
        self._cache = cache
        self._interval = interval
        self._sleep = sleep
        self._cursor = 0
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._feed is not None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._feed is None or self.running:
            return
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="grant-status-watcher")

    async def stop(self) -> None:
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
            await self.run_once()
            await self._sleep(self._interval)

    async def run_once(self) -> int:
        """One pass: bury the grants that died elsewhere; returns how many. A store error is
        logged (once while it lasts) and answered with 0."""
        feed = self._feed
        if feed is None:
            return 0
        try:
            batch = await feed.status_changes(self._cursor)
        except BrokerError as exc:
            if not self._failing:
                self._failing = True
                _log.warning(
                    "cannot read grant status changes (retried every %.1f s; grants revoked "
                    "on other replicas are served until it answers): %s",
                    self._interval,
                    exc.reason,
                )
            return 0
        if self._failing:
            self._failing = False
            _log.info("grant status changes are read again")
        self._cursor = batch.cursor
        buried = [c for c in batch.changes if self._cache.note_status(c.grant_id, c.status)]
        for change in buried:
            _log.debug(
                "grant status changed elsewhere",
                extra={"grant_id": change.grant_id, "status": change.status.value},
            )
        if buried:
            _log.info("dropped %d cached grant(s) whose status changed elsewhere", len(buried))
        return len(buried)
