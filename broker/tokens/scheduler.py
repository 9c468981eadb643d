"""The background pass: wakes every ``interval`` seconds and refreshes the grants that are due,
a few at a time, through the single flight; and crash recovery at start (G02).

Which grants are due (:meth:`Scheduler.find_due`): every ACTIVE grant of the store is admitted
to the cache (a token another replica stored is picked up and published to watchers), grants
deleted from the store are forgotten, dead ones buried; a grant is due once the monotonic
clock passes its entry's ``due_at`` (per-grant jitter lives there, so N grants expiring together
become due at different wake-ups: J02), unless it is in flight or in back-off.

With a store that indexes and leases (:class:`broker.tokens.stores.base.GrantIndex` and
:class:`~broker.tokens.stores.base.RefreshClaims`: memory, SQLite, PostgreSQL) a pass opens only
what it refreshes: it claims the grants the store says are due (``refresh_due_at``, clear and
indexed; replicas sharing the store divide them, a crashed replica's lease expires), keeps those
not in flight or back-off and, when cached, whose entry is due, and refreshes them; every
``SWEEP_EVERY``-th pass (the first included) reads the clear metadata of every grant to forget
deleted grants, bury dead ones and pick up (open, publish) the cached grants another replica
rotated. Stores without those roles are scanned in full as before. A pass that claimed
``CLAIM_LIMIT`` grants, all due, and refreshed them all without a failure leaves more due grants
behind (a storm: thousands due at once): the next pass starts at once instead of ``interval``
later, so a backlog drains at the refresh rate. One failure, a grant released or skipped, or a
claim below the limit, and the loop waits as usual (an AS in trouble still sees one claim per
interval; an immediate pass never meets the grants of the previous one: they are rotated or
leased).

Crash recovery (:meth:`Scheduler.recover_interrupted`): ACTIVE grants whose intent record
(``refresh_started_at``) is set had a refresh in flight when a process died, and the AS may or
may not have rotated the refresh token. Each is refreshed once, normally, with the stored (old)
refresh token. An AS with a rotation grace period (or DOME, which never revokes old refresh
tokens) answers with new tokens; one without answers ``invalid_grant`` and the grant is flagged
REAUTHORIZATION_REQUIRED like any dead grant: one attempt, never a loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from broker.clock import Clock
from broker.errors import BrokerError
from broker.tokens.cache import TokenCache
from broker.tokens.flight import Flights
from broker.tokens.model import Grant, GrantStatus, GrantSummary
from broker.tokens.settings import BackgroundPolicy, Sleep
from broker.tokens.stores.base import GrantIndex, GrantStore, RefreshClaims
from broker.tokens.stores.due import DEFAULT_DUE_RULE, DueRule

_log = logging.getLogger("broker.tokens.broker")  # the token core's log name

#: A refresh lease: long enough for one refresh with its retries; a failed refresh's grant is
#: left to the lease (and the local back-off) before any replica tries it again.
CLAIM_LEASE = 120.0
#: Due grants claimed per pass (the rest are claimed by the next passes or other replicas).
CLAIM_LIMIT = 1000
#: Every how many passes the clear metadata of every grant is read (deleted, dead, rotated
#: elsewhere). Reading it opens nothing.
SWEEP_EVERY = 10


def replica_name() -> str:
    """This process's name in refresh leases (host, pid and a random part: unique)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _LeaseState:
    owner: str  # this replica in the store's refresh leases
    rule: DueRule  # the core's schedule, given to the store before the first indexed pass
    passes: int = 0
    full: bool = False  # the last pass claimed CLAIM_LIMIT grants and every one was due
    backlog: bool = False  # ... and refreshed them all: start the next pass at once


class _Indexed(GrantStore, GrantIndex, RefreshClaims):
    """A store with the scheduling roles (a type for the checks below, never instantiated)."""


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
        schedule: DueRule = DEFAULT_DUE_RULE,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cache = cache
        self._flights = flights
        self._wait = functools.partial(sleep, policy.interval)
        self._semaphore = asyncio.Semaphore(policy.concurrency)
        self._min_serve_ttl = min_serve_ttl
        self._task: asyncio.Task[None] | None = None
        self._lease = _LeaseState(replica_name(), schedule)

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
            if not self._lease.backlog:
                await self._wait()
            self._lease.backlog = False
            try:
                await self.run_once()
            except BrokerError as exc:
                # e.g. the store is unreachable: try again at the next wake-up
                _log.warning("background refresh pass failed: %s", exc.reason)

    async def run_once(self) -> int:
        """One pass: refresh every due grant, at most ``concurrency`` at a time. Returns the
        number of grants it tried."""
        self._lease.full = False
        due = await self.find_due()
        if not due:
            return 0
        refreshed = await asyncio.gather(*(self._one(grant_id) for grant_id in due))
        self._lease.backlog = self._lease.full and all(refreshed)
        return len(due)

    async def _one(self, grant_id: str) -> bool:
        async with self._semaphore:
            try:
                await self._flights.join(grant_id, self._min_serve_ttl)
            except BrokerError as exc:
                # already recorded by the refresh path (store.record_error / status change)
                _log.info("background refresh of grant %s failed: %s", grant_id, exc.reason)
                return False
            return True

    def _indexed(self) -> _Indexed | None:
        store = self._store
        if all(callable(getattr(store, m, None)) for m in ("list_metadata", "claim_due")):
            return store  # type: ignore[return-value]
        return None

    async def find_due(self) -> list[str]:
        if self._flights.stopping:
            return []
        store = self._indexed()
        if store is not None:
            return await self._find_due_indexed(store)
        return await self._find_due_by_scan()

    async def _find_due_indexed(self, store: _Indexed) -> list[str]:
        """Claim the due grants; open only the ones another replica rotated (sweep)."""
        if self._lease.passes == 0:
            await store.reschedule(self._lease.rule)  # due times by the core's own schedule
        if self._lease.passes % SWEEP_EVERY == 0:
            await self._sweep(store)
        self._lease.passes += 1
        claimed = await store.claim_due(
            self._clock.now(), owner=self._lease.owner, lease=CLAIM_LEASE, limit=CLAIM_LIMIT
        )
        mono = self._clock.monotonic()
        due = []
        for summary in claimed:
            entry = self._cache.get(summary.grant_id)
            if self._flights.busy(summary.grant_id):
                continue  # in flight here: its lease is ours; in back-off: the lease waits
            if entry is not None and entry.version >= summary.version and mono < entry.due_at:
                await store.release_claim(summary.grant_id, owner=self._lease.owner)
                continue  # the core's own schedule says later
            due.append(summary.grant_id)
        self._lease.full = len(due) >= CLAIM_LIMIT
        return due

    async def _sweep(self, store: _Indexed) -> None:
        listed = {s.grant_id: s for s in await store.list_metadata()}
        for grant_id in self._cache.grant_ids():
            if grant_id not in listed and grant_id not in self._flights:
                self._cache.forget(grant_id)  # deleted (by another replica or an operator)
        for grant_id, summary in listed.items():
            entry = self._cache.get(grant_id)
            if summary.status is not GrantStatus.ACTIVE:
                if entry is not None:
                    self._cache.check_status_quietly(_status_only(summary))
                continue
            if entry is not None and entry.version < summary.version:
                self._cache.admit(await self._store.get(grant_id))  # rotated elsewhere

    async def _find_due_by_scan(self) -> list[str]:
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
        store = self._indexed()
        if store is not None:  # the intent records are clear columns: open nothing to find them
            ids = [
                s.grant_id
                for s in await store.list_metadata()
                if s.status is GrantStatus.ACTIVE and s.refresh_started_at is not None
            ]
            grants = [await self._store.get(grant_id) for grant_id in ids]
        else:
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


def _status_only(summary: GrantSummary) -> Grant:
    """A token-less Grant carrying a summary's status, for the cache's status check (which
    reads only the id and status)."""
    return Grant(
        grant_id=summary.grant_id,
        label=summary.label,
        issuer=summary.issuer,
        client_id=summary.client_id,
        subject=summary.subject,
        scope=summary.scope,
        status=summary.status,
        access_token="-",  # noqa: S106 (no token: never served, the grant is dead)
        access_expires_at=summary.access_expires_at,
        refresh_token=None,
        created_at=summary.created_at,
        updated_at=summary.updated_at,
        version=summary.version,
        kind=summary.kind,
    )
