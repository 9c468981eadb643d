"""The background pass: wakes every ``interval`` seconds and refreshes the grants that are due,
a few at a time, through the single flight; and crash recovery at start (G02).

Which grants are due (:meth:`Scheduler.find_due`): every ACTIVE grant of the store is admitted
to the cache (a token another replica stored is picked up and published to watchers), grants
deleted from the store are forgotten, dead ones buried; a grant is due once the monotonic
clock passes its entry's ``due_at`` (per-grant jitter lives there, so N grants expiring together
become due at different wake-ups: J02), unless it is in flight or in back-off.

Crash recovery (:meth:`Scheduler.recover_interrupted`): ACTIVE grants whose intent record
(``refresh_started_at``) is set had a refresh in flight when a process died, and the AS may or
may not have rotated the refresh token. Each is refreshed once, normally, with the stored (old)
refresh token. An AS with a rotation grace period (or DOME, which never revokes old refresh
tokens) answers with new tokens; one without answers ``invalid_grant`` and the grant is flagged
REAUTHORIZATION_REQUIRED like any dead grant: one attempt, never a loop.
"""

from __future__ import annotations

import asyncio
import logging

from broker.clock import Clock
from broker.errors import BrokerError
from broker.tokens.cache import TokenCache
from broker.tokens.flight import Flights
from broker.tokens.model import GrantStatus
from broker.tokens.settings import BackgroundPolicy, Sleep
from broker.tokens.stores.base import GrantStore

_log = logging.getLogger("broker.tokens.broker")  # the token core's log name


class Scheduler:
    def __init__(
        self,
        store: GrantStore,
        cache: TokenCache,
        flights: Flights,
        *,
        clock: Clock,
        policy: BackgroundPolicy,
        sleep: Sleep,
        min_serve_ttl: float,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cache = cache
        self._flights = flights
        self._interval = policy.interval
        self._semaphore = asyncio.Semaphore(policy.concurrency)
        self._sleep = sleep
        self._min_serve_ttl = min_serve_ttl
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="token-refresher")

    async def stop(self) -> None:
        """Stop waking up. Refreshes already started are shielded by the single flight and
        keep running; ``Flights.wait_idle`` waits for them."""
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
        due = await self.find_due()
        if not due:
            return 0
        await asyncio.gather(*(self._one(grant_id) for grant_id in due))
        return len(due)

    async def _one(self, grant_id: str) -> None:
        async with self._semaphore:
            try:
                await self._flights.join(grant_id, self._min_serve_ttl)
            except BrokerError as exc:
                # already recorded by the refresh path (store.record_error / status change)
                _log.info("background refresh of grant %s failed: %s", grant_id, exc.reason)

    async def find_due(self) -> list[str]:
        if self._flights.stopping:
            return []
        due = []
        now = self._clock.monotonic()
        grants = await self._store.list()
        listed = {grant.grant_id for grant in grants}
        for grant_id in self._cache.grant_ids():
            if grant_id not in listed and grant_id not in self._flights:
                self._cache.forget(grant_id)  # deleted (by another replica or an operator)
        for grant in grants:
            if grant.status is not GrantStatus.ACTIVE:
                if self._cache.get(grant.grant_id) is not None:
                    self._cache.check_status_quietly(grant)
                continue
            entry = self._cache.admit(grant)
            if self._flights.busy(grant.grant_id):
                continue
            if now >= entry.due_at:
                due.append(grant.grant_id)
        return due

    async def recover_interrupted(self) -> list[str]:
        """Refresh once every ACTIVE grant with an intent record; returns their ids. Failures
        are recorded (dead grants flagged), not raised."""
        grants = [
            g
            for g in await self._store.list()
            if g.status is GrantStatus.ACTIVE and g.refresh_started_at is not None
        ]
        results = await asyncio.gather(
            *(self._flights.join(g.grant_id, self._min_serve_ttl) for g in grants),
            return_exceptions=True,
        )
        for grant, result in zip(grants, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, BrokerError):
                raise result
            if isinstance(result, BrokerError):
                _log.warning("recovery of grant %s failed: %s", grant.grant_id, result.reason)
        return [g.grant_id for g in grants]
