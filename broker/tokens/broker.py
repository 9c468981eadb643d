"""TokenBroker: the token core's facade. Serves access tokens by grant, refreshing ahead of
expiry; the parts, one concept each:

- :mod:`broker.tokens.settings`: the grouped settings (RefreshPolicy, BackgroundPolicy,
  Reporting, Identities, Seams; the back-off is a :class:`broker.backoff.BackoffPolicy`)
- :mod:`broker.tokens.cache`: cached tokens, freshness, dead grants
- :mod:`broker.tokens.core`: serving (get, watch, add, list, revoke)
- :mod:`broker.tokens.flight`: single flight and the per-grant back-off
- :mod:`broker.tokens.refresh`: the refresh path under the store lock
- :mod:`broker.tokens.machine`: machine grants (client credentials)
- :mod:`broker.tokens.routing`: which identity's refresher refreshes a grant
- :mod:`broker.tokens.persistence`: results the store failed to write, emergency files
- :mod:`broker.tokens.scheduler`: the background pass and crash recovery
- :mod:`broker.tokens.status_watch`: grants revoked through other replicas leave the cache
- :mod:`broker.tokens.watch`: watcher queues

Implements :class:`broker.login.ports.GrantSink` (``add_grant``) and the server's
:class:`broker.server.ports.TokenService`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from broker.backoff import BackoffPolicy
from broker.clock import Clock
from broker.errors import InvalidArgument
from broker.oauth.types import TokenSet
from broker.tokens.cache import TokenCache
from broker.tokens.core import Serving
from broker.tokens.emergency import EmergencyVault
from broker.tokens.flight import Backoffs, Flights
from broker.tokens.machine import MachineGrants, MachineGrantSpec
from broker.tokens.model import AccessToken, Grant, GrantSummary
from broker.tokens.persistence import PendingResults
from broker.tokens.ports import MachineTokenSource, Refresher
from broker.tokens.refresh import RefreshPath
from broker.tokens.routing import GrantRouting
from broker.tokens.scheduler import Scheduler
from broker.tokens.settings import (
    REFRESH_BACKOFF,
    BackgroundPolicy,
    Identities,
    RefreshPolicy,
    Reporting,
    Seams,
)
from broker.tokens.status_watch import StatusWatcher
from broker.tokens.stores.base import GrantStore
from broker.tokens.watch import Watchers


class TokenBroker:
    def __init__(
        self,
        store: GrantStore,
        refresher: Refresher,
        clock: Clock,
        *,
        refresh: RefreshPolicy | None = None,
        backoff: BackoffPolicy = REFRESH_BACKOFF,
        background: BackgroundPolicy | None = None,
        reporting: Reporting | None = None,
        identities: Identities | None = None,
        emergency: EmergencyVault | None = None,
        machine: MachineTokenSource | None = None,
        seams: Seams | None = None,
        watch_queue_size: int = 8,
    ) -> None:
        if watch_queue_size < 1:
            raise InvalidArgument("watch_queue_size must be at least 1")
        if not backoff.initial > 0:
            raise InvalidArgument("the refresh back-off needs a positive initial delay")
        policy = refresh or RefreshPolicy()
        reporting = reporting or Reporting()
        seams = seams or Seams()
        tracer = reporting.tracer()
        self._watchers = watchers = Watchers(watch_queue_size)
        self._cache = cache = TokenCache(clock, policy, watchers, reporting.observer)
        self._backoffs = backoffs = Backoffs(backoff, policy.schedule(), clock, seams.rng)
        self._pending = PendingResults(store, cache, emergency, reporting.persistence)
        cache.on_dead = self._forget_dead
        self._machine = MachineGrants(
            store, machine, cache, backoffs=backoffs, audit=reporting.audit, clock=clock
        )
        refresh_path = RefreshPath(
            store,
            cache,
            self._pending,
            backoffs=backoffs,
            routing=GrantRouting(refresher, identities),
            machine=self._machine,
            reporting=reporting,
            clock=clock,
        )
        ttl = policy.min_serve_ttl
        self._flights = Flights(refresh_path.run, backoffs, tracer, reporting.observer, ttl)
        background = background or BackgroundPolicy()
        self._status = StatusWatcher(
            store, cache, interval=background.status_interval, sleep=seams.status_sleep
        )
        self._scheduler = Scheduler(
            store,
            cache,
            self._flights,
            clock=clock,
            policy=background,
            sleep=seams.sleep,
            min_serve_ttl=ttl,
            schedule=policy.schedule(),
        )
        self._serving = Serving(
            store,
            cache,
            self._flights,
            machine=self._machine,
            watchers=watchers,
            audit=reporting.audit,
            tracer=tracer,
            clock=clock,
            min_serve_ttl=ttl,
            id_factory=seams.id_factory,
        )

    def _forget_dead(self, grant_id: str) -> None:
        self._pending.release(grant_id)
        self._backoffs.clear(grant_id)

    # --- serving ---------------------------------------------------------------------------

    async def get_access_token(self, grant_id: str, *, min_ttl: float = 0) -> AccessToken:
        """See :meth:`broker.tokens.core.Serving.get_access_token`."""
        return await self._serving.get_access_token(grant_id, min_ttl=min_ttl)

    def watch(self, grant_id: str) -> AsyncGenerator[AccessToken, None]:
        """See :meth:`broker.tokens.core.Serving.watch`."""
        return self._serving.watch(grant_id)

    def watcher_count(self, grant_id: str | None = None) -> int:
        """Open watch streams (of ``grant_id``, or of every grant)."""
        return self._watchers.count(grant_id)

    async def add_grant(
        self, tokens: TokenSet, *, label: str, issuer: str, client_id: str
    ) -> Grant:
        """GrantSink: store a grant from a completed login and cache its token."""
        return await self._serving.add_grant(
            tokens, label=label, issuer=issuer, client_id=client_id
        )

    async def get_grant(self, grant_id: str) -> Grant:
        return await self._serving.get_grant(grant_id)

    async def list_grants(self, label: str | None = None) -> Sequence[Grant | GrantSummary]:
        return await self._serving.list_grants(label)

    async def revoke_grant(self, grant_id: str) -> Grant:
        """See :meth:`broker.tokens.core.Serving.revoke_grant`."""
        return await self._serving.revoke_grant(grant_id)

    # --- machine grants --------------------------------------------------------------------

    def register_machine_grant(self, spec: MachineGrantSpec) -> str:
        return self._machine.register(spec)

    async def ensure_machine_grant(self, spec: MachineGrantSpec) -> Grant:
        return await self._machine.ensure(spec)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-import emergency files (G04), recover refreshes interrupted by a crash (G02),
        then start the background pass and the status watcher."""
        self._flights.stopping = False
        await self.import_emergency()
        await self.recover_interrupted()
        self._scheduler.start()
        self._status.start()

    async def stop(self) -> None:
        """Stop the background pass, wait until every refresh in flight has finished
        persisting (J05), then write each refresh result the store still lacks to an emergency
        file (G04). Blocking callers still get refreshes after this."""
        self._flights.stopping = True
        await self._status.stop()
        await self._scheduler.stop()
        await self.wait_idle()
        await self.flush_emergency()

    async def wait_idle(self) -> None:
        """Wait until no refresh is in flight."""
        await self._flights.wait_idle()

    async def recover_interrupted(self) -> list[str]:
        return await self._scheduler.recover_interrupted()

    async def refresh_due_now(self) -> int:
        """One background pass (what the scheduler does every ``background.interval``)."""
        return await self._scheduler.run_once()

    async def read_status_changes(self) -> int:
        """One status watcher pass (what it does every ``background.status_interval``):
        grants that died through another replica leave the cache; returns how many."""
        return await self._status.run_once()

    # --- G04: results the store could not write --------------------------------------------

    @property
    def unpersisted_grants(self) -> frozenset[str]:
        """Grants holding a refresh result the store failed to write: non-empty = DEGRADED."""
        return self._pending.grant_ids()

    @property
    def degraded(self) -> bool:
        return bool(self._pending.grant_ids())

    async def flush_emergency(self) -> list[str]:
        return await self._pending.flush()

    async def import_emergency(self) -> list[str]:
        return await self._pending.import_all()

    # --- the outage budget -----------------------------------------------------------------

    def outage_budget(self) -> float | None:
        """Seconds until the earliest refresh-token expiry among the active grants this
        process knows (every one after the first background pass); None when none is known.
        If the AS stays down longer, that grant dies."""
        return self._cache.outage_budget()

    def grants_in_last_retry_window(self) -> int:
        """Grants whose last refresh failed and that are within ``refresh.threshold`` seconds
        of their retry deadline (or past it)."""
        return sum(1 for g in self._backoffs.failing() if self._cache.in_last_window(g))
