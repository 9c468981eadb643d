"""One refresh at a time per grant (single flight), and the per-grant back-off after failures.

Single flight (G06): one asyncio task per grant, shared by every waiter. Waiters are shielded:
a caller's cancellation or deadline never cancels the refresh (F05). A background flight's
failure is recorded by the refresh path, never lost.

Back-off (A06): after a failed refresh the next attempt waits (:mod:`broker.backoff`: first
>= ``initial``, doubling, jittered, ``Retry-After`` as a floor), but never beyond the grant's
retry deadline while that is still ahead (the last chance is not skipped). During a back-off a
caller who needs a refresh fails fast with the last error instead of hitting the AS again.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from broker.backoff import BackoffPolicy
from broker.clock import Clock
from broker.errors import AuthServerUnavailable, BrokerError
from broker.tokens.cache import CacheEntry, observe
from broker.tokens.observer import TokenBrokerObserver
from broker.tokens.schedule import RefreshSchedule


@dataclass(frozen=True)
class Failure:
    """A grant in back-off: ``failures`` in a row, no attempt before ``not_before``
    (monotonic), ``error`` raised to callers meanwhile."""

    failures: int
    not_before: float
    error: BrokerError


class Backoffs:
    def __init__(
        self,
        policy: BackoffPolicy,
        schedule: RefreshSchedule,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self._policy = policy
        self._schedule = schedule
        self._clock = clock
        self._rng = rng
        self._failures: dict[str, Failure] = {}

    def active(self, grant_id: str) -> Failure | None:
        """The grant's failure while its back-off lasts, else None."""
        failure = self._failures.get(grant_id)
        if failure is not None and self._clock.monotonic() < failure.not_before:
            return failure
        return None

    def failing(self) -> list[str]:
        """Grants whose last refresh failed (in back-off or not)."""
        return list(self._failures)

    def note_failure(self, grant_id: str, exc: BrokerError, retry_until: float | None) -> None:
        previous = self._failures.get(grant_id)
        failures = previous.failures + 1 if previous else 1
        retry_after = exc.retry_after if isinstance(exc, AuthServerUnavailable) else None
        delay = self._policy.delay(failures, self._rng.random(), retry_after=retry_after)
        not_before = self._schedule.next_attempt(self._clock.monotonic(), delay, retry_until)
        self._failures[grant_id] = Failure(failures, not_before, exc)

    def clear(self, grant_id: str) -> None:
        self._failures.pop(grant_id, None)


Run = Callable[[str, float], Coroutine[Any, Any, CacheEntry]]
"""The refresh of one grant for a caller needing ``need`` seconds (the refresh path)."""


class Flights:
    """The refresh task of each grant. ``stopping``: no new background flights (blocking
    callers still get refreshes)."""

    def __init__(
        self,
        run: Run,
        backoffs: Backoffs,
        tracer: trace.Tracer,
        observer: TokenBrokerObserver,
        min_serve_ttl: float,
    ) -> None:
        self._run = run
        self._backoffs = backoffs
        self._tracer = tracer
        self._observer = observer
        self._min_serve_ttl = min_serve_ttl
        self._tasks: dict[str, asyncio.Task[CacheEntry]] = {}
        self.stopping = False

    def __contains__(self, grant_id: str) -> bool:
        return grant_id in self._tasks

    def busy(self, grant_id: str) -> bool:
        """In flight or in back-off: not to be started by the scheduler."""
        return grant_id in self._tasks or self._backoffs.active(grant_id) is not None

    def trigger(self, grant_id: str) -> None:
        """Start a background refresh (a STALE token was served) unless one is running, the
        grant is in back-off, or the broker is stopping."""
        if self.stopping or self.busy(grant_id):
            return
        self._start(grant_id, self._min_serve_ttl)

    async def blocking(self, grant_id: str, need: float) -> CacheEntry:
        """A caller who cannot be served without a refresh: fail fast during a back-off."""
        failure = self._backoffs.active(grant_id)
        if failure is not None and grant_id not in self._tasks:
            raise failure.error.with_traceback(None)
        return await self.join(grant_id, need)

    async def join(self, grant_id: str, need: float) -> CacheEntry:
        task = self._tasks.get(grant_id)
        leader = task is None
        if task is None:
            task = self._start(grant_id, need)
        else:
            observe(lambda: self._observer.single_flight_joined(grant_id))
        with self._tracer.start_as_current_span("tokens.single_flight_wait") as span:
            span.set_attribute("grant.id", grant_id)
            span.set_attribute("single_flight.leader", leader)
            return await asyncio.shield(task)

    async def wait_idle(self) -> None:
        """Wait until no refresh is in flight."""
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    def _start(self, grant_id: str, need: float) -> asyncio.Task[CacheEntry]:
        task = asyncio.get_running_loop().create_task(
            self._run(grant_id, need), name=f"refresh-{grant_id}"
        )
        self._tasks[grant_id] = task
        task.add_done_callback(functools.partial(self._done, grant_id))
        return task

    def _done(self, grant_id: str, task: asyncio.Task[CacheEntry]) -> None:
        if self._tasks.get(grant_id) is task:
            del self._tasks[grant_id]
        if not task.cancelled():
            task.exception()  # retrieved: a background flight's failure is recorded, not lost
