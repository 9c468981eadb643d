"""The token core's memory: cached access tokens, their freshness, and dead grants.

An entry's expiry and due time are on the monotonic clock from the moment the token reached
this process, so a wall-clock step does not expire (or revive) cached tokens (G08). A grant
seen REVOKED or REAUTHORIZATION_REQUIRED is remembered as dead: later calls raise at once
without reading the store or contacting the AS (A05).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from broker.clock import Clock
from broker.errors import GrantRevoked, ReauthorizationRequired
from broker.oauth.types import TokenSet
from broker.tokens.freshness import Freshness, freshness
from broker.tokens.model import AccessToken, Grant, GrantKind, GrantStatus
from broker.tokens.observer import TokenBrokerObserver
from broker.tokens.schedule import LifetimeKind, outage_budget
from broker.tokens.settings import RefreshPolicy
from broker.tokens.watch import Watchers

_log = logging.getLogger("broker.tokens.broker")  # the token core's log name

TOKEN_TYPE = "Bearer"  # noqa: S105 - a token type, not a secret
"""The grant record keeps no token type; DOME and oidc-provider issue Bearer tokens."""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached access token. ``mono_expires`` and ``due_at`` are on the monotonic clock.

    ``token`` is the token as served FRESH, built once when the entry is made: a FRESH serve
    hands out that same (frozen) object, so a cache hit allocates nothing and reads no
    per-grant field but ``mono_expires``. Slotted, with no field that ``token`` already holds,
    so a grant costs two small objects (a large cache stays cheap to walk at random)."""

    token: AccessToken
    version: int
    mono_expires: float
    due_at: float
    """When the scheduler picks it up (:meth:`RefreshSchedule.due_at`)."""
    retry_until: float | None = None
    """Failed refreshes are retried at least until then (refresh-token expiry minus margin)."""
    refresh_expires_at: float | None = None
    """The refresh token's expiry, epoch seconds (None: unknown)."""

    @property
    def grant_id(self) -> str:
        return self.token.grant_id

    def __repr__(self) -> str:
        return f"CacheEntry(grant_id={self.token.grant_id!r}, version={self.version})"


def observe(hook: Callable[[], None]) -> None:
    """Run an observer hook; its failure is logged, never the caller's problem."""
    try:
        hook()
    except Exception:
        _log.exception("token broker observer hook failed")


class TokenCache:
    """Entries by grant id, the lifetime the AS last issued per grant, and dead grants.

    ``on_dead(grant_id)`` is called when a grant dies, so the other parts drop what they hold
    for it (an unpersisted result, a back-off)."""

    def __init__(
        self,
        clock: Clock,
        policy: RefreshPolicy,
        watchers: Watchers,
        observer: TokenBrokerObserver,
    ) -> None:
        self._clock = clock
        self._policy = policy
        self._schedule = policy.schedule()
        self._watchers = watchers
        self._observer = observer
        self._entries: dict[str, CacheEntry] = {}
        self._lifetimes: dict[str, float] = {}  # of the last token the AS issued, per grant
        self._dead: dict[str, type[ReauthorizationRequired]] = {}
        self.on_dead: Callable[[str], None] = lambda grant_id: None

    # --- entries ---------------------------------------------------------------------------

    def get(self, grant_id: str) -> CacheEntry | None:
        return self._entries.get(grant_id)

    def grant_ids(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> Iterator[CacheEntry]:
        return iter(self._entries.values())

    def forget(self, grant_id: str) -> None:
        """Deleted from the store (by another replica or an operator)."""
        self._entries.pop(grant_id, None)

    def put(self, grant: Grant, tokens: TokenSet | None = None) -> CacheEntry:
        """Cache ``grant`` as stored; ``tokens``: the set the AS just issued for it (its
        lifetime is remembered for later entries of this grant)."""
        entry = self.entry(grant)
        self._entries[grant.grant_id] = entry
        if tokens is not None:
            self.remember_lifetime(grant.grant_id, tokens)
        return entry

    def remember_lifetime(self, grant_id: str, tokens: TokenSet) -> None:
        self._lifetimes[grant_id] = tokens.expires_at - tokens.received_at

    def admit(self, grant: Grant) -> CacheEntry:
        """Cache a grant read from the store (raising if it is dead); keeps the cached entry
        when it is the same version, publishes when it is newer."""
        self.check_status(grant)
        cached = self._entries.get(grant.grant_id)
        if cached is not None and cached.version >= grant.version:
            return cached
        entry = self.entry(grant)
        self._entries[grant.grant_id] = entry
        if cached is not None:
            self.publish(entry)
        return entry

    def entry(self, grant: Grant) -> CacheEntry:
        now, mono = self._clock.now(), self._clock.monotonic()
        lifetime_policy = self._policy.lifetime
        issued = grant.access_issued_at
        lifetime = self._lifetimes.get(grant.grant_id)
        if issued is None and lifetime is not None:
            issued = grant.access_expires_at - lifetime
        due = self._schedule.due_at(
            grant.grant_id, grant.version, issued_at=issued, expires_at=grant.access_expires_at
        )
        refresh_expires = grant.refresh_expires_at
        if grant.kind is GrantKind.MACHINE:
            pass  # no refresh token: nothing dies in an outage but the access token
        elif refresh_expires is None and issued is not None:
            refresh_expires = lifetime_policy.expiry(
                issued_at=issued, access_expires_at=grant.access_expires_at
            )
        elif refresh_expires is None and lifetime_policy.kind is LifetimeKind.ACCESS:
            refresh_expires = grant.access_expires_at
        deadline = self._schedule.retry_deadline(refresh_expires)
        token = AccessToken(
            grant_id=grant.grant_id,
            access_token=grant.access_token,
            token_type=TOKEN_TYPE,
            expires_at=grant.access_expires_at,
            scope=grant.scope,
            subject=grant.subject,
            freshness=Freshness.FRESH,
        )
        return CacheEntry(
            token=token,
            version=grant.version,
            mono_expires=mono + (grant.access_expires_at - now),
            due_at=mono + (due - now),
            retry_until=None if deadline is None else mono + (deadline - now),
            refresh_expires_at=refresh_expires,
        )

    def resolve(self, tokens: TokenSet) -> TokenSet:
        """Give a new refresh token without ``refresh_expires_in`` the configured lifetime."""
        if tokens.refresh_token is None or tokens.refresh_expires_at is not None:
            return tokens
        expiry = self._policy.lifetime.expiry(
            issued_at=tokens.received_at, access_expires_at=tokens.expires_at
        )
        return tokens if expiry is None else dataclasses.replace(tokens, refresh_expires_at=expiry)

    # --- freshness -------------------------------------------------------------------------

    def cap(self, grant_id: str, need: float) -> float:
        """A caller's minimum lifetime beyond what the AS issues cannot be met by refreshing:
        cap it at (issued lifetime - threshold), so such callers cause at most one refresh per
        ``threshold`` seconds instead of one per call."""
        lifetime = self._lifetimes.get(grant_id)
        if lifetime is None:
            return need
        return min(need, max(self._policy.min_serve_ttl, lifetime - self._policy.threshold))

    def remaining(self, entry: CacheEntry) -> float:
        return entry.mono_expires - self._clock.monotonic()

    def state(self, entry: CacheEntry, need: float) -> Freshness:
        return freshness(
            entry.mono_expires,
            self._clock.monotonic(),
            threshold=self._policy.threshold,
            min_ttl=need,
        )

    def fresh_and_not_due(self, entry: CacheEntry, need: float) -> bool:
        return self.state(entry, need) is Freshness.FRESH and self._clock.monotonic() < entry.due_at

    def serve(self, entry: CacheEntry, state: Freshness, *, cache_hit: bool) -> AccessToken:
        token = entry.token
        observe(lambda: self._observer.token_served(token.grant_id, state, cache_hit=cache_hit))
        if state is Freshness.FRESH:
            return token
        return AccessToken(
            grant_id=token.grant_id,
            access_token=token.access_token,
            token_type=token.token_type,
            expires_at=token.expires_at,
            scope=token.scope,
            subject=token.subject,
            freshness=state,
        )

    def publish(self, entry: CacheEntry) -> None:
        if self._watchers.wants(entry.grant_id):
            state = self.state(entry, self._policy.min_serve_ttl)
            self._watchers.publish(entry.grant_id, self.serve(entry, state, cache_hit=False))

    def outage_budget(self) -> float | None:
        return outage_budget((e.refresh_expires_at for e in self.entries()), self._clock.now())

    def in_last_window(self, grant_id: str) -> bool:
        entry = self._entries.get(grant_id)
        return entry is not None and self._schedule.in_last_window(
            self._clock.monotonic(), entry.retry_until
        )

    # --- dead grants -----------------------------------------------------------------------

    def raise_if_dead(self, grant_id: str) -> None:
        error = self._dead.get(grant_id)
        if error is not None:
            raise error(f"grant {grant_id} needs re-authorization")

    def check_status(self, grant: Grant) -> None:
        if grant.status is GrantStatus.REVOKED:
            self.bury(grant.grant_id, GrantRevoked)
        elif grant.status is GrantStatus.REAUTHORIZATION_REQUIRED:
            self.bury(grant.grant_id, ReauthorizationRequired)
        else:
            return
        self.raise_if_dead(grant.grant_id)

    def note_status(self, grant_id: str, status: GrantStatus) -> bool:
        """A status stored for ``grant_id`` (through any replica): bury the grant if it is dead
        and this process caches it, watches it or knew it dead otherwise; True when buried."""
        if status is GrantStatus.REVOKED:
            error: type[ReauthorizationRequired] = GrantRevoked
        elif status is GrantStatus.REAUTHORIZATION_REQUIRED:
            error = ReauthorizationRequired
        else:
            return False
        known = self._dead.get(grant_id)
        if known is error:
            return False
        if known is None and grant_id not in self._entries and not self._watchers.wants(grant_id):
            return False  # never served here: its first read finds the status in the store
        self.bury(grant_id, error)
        return True

    def check_status_quietly(self, grant: Grant) -> None:
        with contextlib.suppress(ReauthorizationRequired):
            self.check_status(grant)

    def bury(self, grant_id: str, error: type[ReauthorizationRequired]) -> None:
        """Forget the grant's tokens and end its watchers; later calls raise ``error``."""
        self._dead[grant_id] = error
        self._entries.pop(grant_id, None)
        self._lifetimes.pop(grant_id, None)
        self.on_dead(grant_id)
        self._watchers.publish(grant_id, error)
