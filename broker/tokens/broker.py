"""TokenBroker: the core domain service. Serves access tokens by grant, refreshing ahead of expiry.

Freshness (``freshness.py``, google-auth's ``TokenState`` shape) decides per call:
FRESH -> served from the in-memory cache (no store read); STALE -> served, and a refresh starts in
the background; INVALID (expired, or less left than ``max(min_ttl, min_serve_ttl)``) -> the caller
waits for a refresh. Expiry is tracked on the monotonic clock from the moment the token reached
this process, so a wall-clock step does not expire (or revive) cached tokens (G08).

Refresh (RFC 6749 section 6) is single-flight: one asyncio task per grant shared by every waiter
(G06), run under ``store.refresh_lock`` (cross-replica with PostgreSQL), re-reading the grant after
taking the lock so a refresh another replica already did is not repeated (G07). Inside the lock:
re-read -> ``mark_refresh_started`` (durable intent) -> ``Refresher.refresh`` -> ``store.rotate``
(the new refresh token is durable before the new access token leaves: A08b) -> cache -> watchers.
Waiters are shielded: a caller's cancellation or deadline never cancels the refresh (F05).

Failures:
- ``InvalidGrant`` -> the grant is flagged REAUTHORIZATION_REQUIRED once; every later call raises
  :class:`ReauthorizationRequired` without contacting the AS (A05: that refresh token is never
  sent again).
- ``TokenValidationError`` (e.g. id_token ``iss``/``sub`` changed) -> grant unchanged, raised (A08c).
- ``store.rotate`` failing (disk full, read-only file system, I/O error, database down: G04) ->
  the new tokens stay in memory and are written first, without asking the AS again, on the next
  attempt; the new access token is not served before that write succeeds. While any grant holds
  such a result the broker is DEGRADED (:attr:`TokenBroker.unpersisted_grants`, and the
  ``persistence_observer`` is told on every change); warm tokens keep being served. With an
  :class:`broker.tokens.emergency.EmergencyVault` the result is also written to a sealed
  emergency file at once and again on ``stop()``; ``start()`` re-imports those files into the
  store (deleting each once it is stored or obsolete) before anything else, and keeps a record
  it cannot store yet in memory: the old refresh token is never sent again once a newer one
  exists in memory or in an emergency file.
- retryable errors (AS down, 429, HSM, store) -> ``store.record_error``; the cached token keeps
  being served while it has more than ``min_serve_ttl`` left; after that the retryable error is
  raised (UNAVAILABLE at the gRPC layer) (A06). Further attempts back off exponentially with
  jitter (first >= ``backoff_initial``, honouring ``Retry-After``); during a back-off a caller
  who needs a refresh fails fast with the last error instead of hitting the AS again.

Machine grants (``GrantKind.MACHINE``, DOME machine-to-machine): configured (label, scope) pairs
made by :meth:`TokenBroker.ensure_machine_grant` under a stable grant id derived from the
deployment and the label (:func:`machine_grant_id`), so every start and every replica finds the
same grant. They have no refresh token: renewal is a new client credentials request through the
:class:`broker.tokens.ports.MachineTokenSource`, chosen by the grant's kind inside the same
single flight, store lock, schedule, back-off and fallback as a refresh. A rejection (credential
refused locally, the Verifier's empty 403, ``invalid_client``) is not retryable and recorded as
the grant's last error; it does not kill the grant: the next attempt after the back-off may
succeed once an operator fixed the cause. A machine grant has no refresh-token expiry, so it is
not in the outage budget.

Deployment binding: given ``deployment`` (the issuer and client_id the refresher sends to;
serve passes the OAuth client's), a grant whose stored issuer or client_id differs is never
refreshed: its refresh token is not sent, :class:`broker.errors.DeploymentMismatch` (not
retryable) is raised and recorded as the grant's last error. During a key rotation
(``other_identities``) a grant of another recorded identity is refreshed through THAT
identity's refresher (its own key and client_id), never the active one's; machine grants are
renewed only as the active identity (``deployment``).

Audit (``audit_events.py``): ``grant.created`` is written before the grant is stored and fails
the call when it cannot be written (H01, fail closed); ``grant.reauthorization_required`` (A05),
``grant.revoked`` and ``token.refresh_rejected`` (B10) are written once each, best effort.

Crash recovery (G02): ``start()`` looks for ACTIVE grants whose intent record
(``refresh_started_at``) is set: a refresh was in flight when a process died, and the AS may or may
not have rotated the refresh token. Each is refreshed once, normally, with the stored (old)
refresh token. An AS with a rotation grace period (or DOME, which never revokes old refresh
tokens) answers with new tokens; an AS without one answers ``invalid_grant`` and the grant is
flagged REAUTHORIZATION_REQUIRED like any dead grant: one attempt, never a loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import logging
import random
import secrets
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from opentelemetry import trace

from broker.clock import Clock
from broker.errors import (
    AuthServerUnavailable,
    BrokerError,
    ConfigError,
    DeploymentMismatch,
    GrantExists,
    GrantNotFound,
    GrantRevoked,
    InvalidArgument,
    InvalidGrant,
    ReauthorizationRequired,
    StoreError,
    TokenValidationError,
    UnexpectedResponse,
    VersionConflict,
)
from broker.oauth.types import TokenSet
from broker.tokens.audit_events import (
    AuditAction,
    AuditEvent,
    AuditTrail,
    Outcome,
    identifier,
    reason_code,
)
from broker.tokens.emergency import (
    EmergencyFileError,
    EmergencyRecord,
    EmergencyVault,
    PersistenceObserver,
)
from broker.tokens.freshness import MIN_SERVE_TTL, REFRESH_THRESHOLD, Freshness, freshness
from broker.tokens.model import AccessToken, Grant, GrantKind, GrantStatus
from broker.tokens.observer import NullObserver, RefreshOutcome, TokenBrokerObserver
from broker.tokens.ports import MachineTokenSource, Refresher
from broker.tokens.refresher import BackgroundRefresher, Sleep
from broker.tokens.schedule import (
    DEFAULT_RETRY_MARGIN,
    LifetimeKind,
    RefreshSchedule,
    RefreshTokenLifetime,
    outage_budget,
)
from broker.tokens.stores.base import GrantStore
from broker.tokens.stores.deployment import DeploymentIdentity, grant_owner_text
from broker.tokens.stores.identities import IdentityRefresher, IdentityRefreshers
from broker.tokens.watch import Watchers

_log = logging.getLogger(__name__)

TOKEN_TYPE = "Bearer"  # noqa: S105 - a token type, not a secret
"""The grant record keeps no token type; DOME and oidc-provider issue Bearer tokens."""

_MAX_ID_ATTEMPTS = 3


def new_grant_id() -> str:
    return secrets.token_urlsafe(16)


MACHINE_GRANT_PREFIX = "m2m-"


def machine_grant_id(issuer: str, client_id: str, label: str) -> str:
    """The stable id of the machine grant ``label`` of one deployment (same on every start and
    every replica): ``m2m-`` + 22 base64url characters of SHA-256 over the three values."""
    digest = hashlib.sha256("\x00".join((issuer, client_id, label)).encode()).digest()
    return MACHINE_GRANT_PREFIX + base64.urlsafe_b64encode(digest).decode()[:22]


@dataclass(frozen=True)
class MachineGrantSpec:
    """A configured machine grant (``[[machine_grants]]``)."""

    label: str
    scope: str
    issuer: str
    client_id: str

    @property
    def grant_id(self) -> str:
        return machine_grant_id(self.issuer, self.client_id, self.label)


@dataclass(frozen=True)
class _Entry:
    """A cached access token. ``mono_expires`` and ``due_at`` are on the monotonic clock."""

    grant_id: str
    version: int
    access_token: str
    expires_at: float
    scope: str
    subject: str
    mono_expires: float
    due_at: float
    """When the background refresher picks it up (:meth:`RefreshSchedule.due_at`)."""
    retry_until: float | None = None
    """Failed refreshes are retried at least until then (refresh-token expiry minus margin)."""
    refresh_expires_at: float | None = None
    """The refresh token's expiry, epoch seconds (None: unknown)."""

    def __repr__(self) -> str:
        return f"_Entry(grant_id={self.grant_id!r}, version={self.version})"


@dataclass(frozen=True)
class _Backoff:
    failures: int
    not_before: float
    error: BrokerError


@dataclass(frozen=True)
class _Unpersisted:
    """A refresh result the store failed to write (G04): its refresh token may be the only
    valid one now, so it is written before the AS is asked again; its access token is never
    served before that write succeeds."""

    tokens: TokenSet
    version: int

    def __repr__(self) -> str:
        return f"_Unpersisted(version={self.version})"


class TokenBroker:
    """Implements :class:`broker.tokens.ports.GrantSink` too (``add_grant``)."""

    def __init__(
        self,
        store: GrantStore,
        refresher: Refresher,
        clock: Clock,
        *,
        refresh_threshold: float = REFRESH_THRESHOLD,
        min_serve_ttl: float = MIN_SERVE_TTL,
        background_interval: float = 15.0,
        jitter: float = 0.1,
        id_factory: Callable[[], str] = new_grant_id,
        observer: TokenBrokerObserver | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        background_concurrency: int = 4,
        tracer_provider: trace.TracerProvider | None = None,
        watch_queue_size: int = 8,
        backoff_initial: float = 5.0,
        backoff_max: float = 300.0,
        audit: AuditTrail | None = None,
        emergency: EmergencyVault | None = None,
        persistence_observer: PersistenceObserver | None = None,
        deployment: DeploymentIdentity | None = None,
        refresh_fraction: float | None = None,
        refresh_retry_margin: float = DEFAULT_RETRY_MARGIN,
        refresh_token_lifetime: RefreshTokenLifetime | None = None,
        machine: MachineTokenSource | None = None,
        other_identities: Sequence[IdentityRefresher] = (),
    ) -> None:
        if refresh_threshold <= 0:
            raise InvalidArgument("refresh_threshold must be positive")
        if min_serve_ttl < 0:
            raise InvalidArgument("min_serve_ttl must not be negative")
        if not 0 <= jitter < 1:
            raise InvalidArgument("jitter must be in [0, 1)")
        if watch_queue_size < 1:
            raise InvalidArgument("watch_queue_size must be at least 1")
        if not 0 < backoff_initial <= backoff_max:
            raise InvalidArgument("need 0 < backoff_initial <= backoff_max")
        if background_interval <= 0 or background_concurrency < 1:
            raise InvalidArgument("background interval and concurrency must be positive")
        self._store = store
        self._audit = audit or AuditTrail.disabled()
        self._tracer = trace.get_tracer("broker.tokens", tracer_provider=tracer_provider)
        self._refresher = refresher
        self._machine = machine
        self._machine_specs: dict[str, MachineGrantSpec] = {}
        self._clock = clock
        self._threshold = refresh_threshold
        self._schedule = RefreshSchedule(
            refresh_threshold, jitter, refresh_fraction, refresh_retry_margin
        )
        self._rt_lifetime = refresh_token_lifetime or RefreshTokenLifetime(LifetimeKind.UNKNOWN)
        self._min_serve_ttl = min_serve_ttl
        self._jitter = jitter
        self._id_factory = id_factory
        self._observer: TokenBrokerObserver = observer or NullObserver()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._cache: dict[str, _Entry] = {}
        self._dead: dict[str, type[ReauthorizationRequired]] = {}
        self._flights: dict[str, asyncio.Task[_Entry]] = {}
        self._backoff: dict[str, _Backoff] = {}
        self._unpersisted: dict[str, _Unpersisted] = {}
        self._emergency = emergency
        self._persistence_observer = persistence_observer
        self._deployment = deployment
        if other_identities and deployment is None:
            raise InvalidArgument("other_identities need the active deployment identity")
        self._routes = (
            None
            if deployment is None
            else IdentityRefreshers([IdentityRefresher(deployment, refresher), *other_identities])
        )
        self._lifetimes: dict[str, float] = {}  # of the last token the AS issued, per grant
        self._watchers = Watchers(watch_queue_size)
        self._stopping = False
        self._background = BackgroundRefresher(
            self._find_due,
            self._refresh_due,
            interval=background_interval,
            concurrency=background_concurrency,
            sleep=sleep,
        )

    # --- serving ---------------------------------------------------------------------------

    async def get_access_token(self, grant_id: str, *, min_ttl: float = 0) -> AccessToken:
        """An access token of ``grant_id`` with more than ``max(min_ttl, min_serve_ttl)``
        seconds left (or, while the AS is unreachable, more than ``min_serve_ttl``).

        Raises GrantNotFound, ReauthorizationRequired (GrantRevoked), TokenValidationError, or
        a retryable BrokerError when no usable token can be had now.
        """
        if not grant_id:
            raise InvalidArgument("grant_id must not be empty")
        if min_ttl < 0:
            raise InvalidArgument("min_ttl must not be negative")
        need = self._cap(grant_id, max(min_ttl, self._min_serve_ttl))
        with self._tracer.start_as_current_span("tokens.get") as span:
            span.set_attribute("grant.id", grant_id)
            self._raise_if_dead(grant_id)
            entry = self._cache.get(grant_id)
            cache_hit = entry is not None
            if entry is None:
                entry = self._admit(await self._load(grant_id))
            state = self._state(entry, need)
            span.set_attribute("token.freshness", str(state))
            span.set_attribute("cache.hit", cache_hit)
            if state is Freshness.FRESH:
                return self._serve(entry, state, cache_hit=cache_hit)
            if state is Freshness.STALE:
                self._trigger_background(grant_id)
                return self._serve(entry, state, cache_hit=cache_hit)
            try:
                entry = await self._refresh_blocking(grant_id, need)
            except BrokerError as exc:
                if not exc.retryable:
                    raise
                fallback = self._cache.get(grant_id)
                if fallback is not None and self._remaining(fallback) > self._min_serve_ttl:
                    span.set_attribute("token.fallback", True)
                    return self._serve(fallback, Freshness.STALE, cache_hit=True)
                raise
            if self._remaining(entry) <= self._min_serve_ttl:
                raise UnexpectedResponse(
                    "the authorization server issued a token shorter than the minimum lifetime"
                )
            return self._serve(entry, self._state(entry, self._min_serve_ttl), cache_hit=False)

    def watch(self, grant_id: str) -> AsyncGenerator[AccessToken, None]:
        """Yield the current token, then each new one after a refresh (including one found in
        the store by the background pass). Ends by raising ReauthorizationRequired (or
        GrantRevoked) when the grant dies. The queue is bounded: a slow watcher skips
        intermediate tokens and gets the newest."""
        return self._watchers.stream(grant_id, lambda: self.get_access_token(grant_id))

    # --- grants ----------------------------------------------------------------------------

    async def add_grant(
        self, tokens: TokenSet, *, label: str, issuer: str, client_id: str
    ) -> Grant:
        """GrantSink: store a grant from a completed login (code exchange) and cache its token."""
        if not label or not issuer or not client_id:
            raise InvalidArgument("label, issuer and client_id must not be empty")
        subject = tokens.subject
        if subject is None:
            raise InvalidArgument("the token set carries no subject (no validated id_token)")
        now = self._clock.now()
        tokens = self._resolve(tokens)
        attempts = 0
        while True:
            grant = Grant(
                grant_id=self._id_factory(),
                label=label,
                issuer=issuer,
                client_id=client_id,
                subject=subject,
                scope=tokens.scope,
                status=GrantStatus.ACTIVE,
                access_token=tokens.access_token,
                access_expires_at=tokens.expires_at,
                refresh_token=tokens.refresh_token,
                created_at=now,
                updated_at=now,
                id_claims=tokens.id_claims,
                access_issued_at=tokens.received_at,
                refresh_expires_at=tokens.refresh_expires_at,
            )
            # H01: written ahead of the store commit, fail closed: no grant (and so no token)
            # exists that the audit trail does not know about.
            created = AuditEvent(
                AuditAction.GRANT_CREATED,
                "ok",
                grant_id=grant.grant_id,
                label=label,
                subject=subject,
            )
            await self._audit.require(created)
            try:
                await self._store.create(grant)
            except BrokerError as exc:
                # Withdraw the write-ahead record: this grant id was never stored.
                await self._audit.note(
                    dataclasses.replace(created, outcome="error", reason=reason_code(exc.reason))
                )
                if not isinstance(exc, GrantExists):
                    raise
                attempts += 1
                if attempts >= _MAX_ID_ATTEMPTS:
                    raise
                continue
            self._cache[grant.grant_id] = self._entry(grant)
            self._remember_lifetime(grant.grant_id, tokens)
            return grant

    async def get_grant(self, grant_id: str) -> Grant:
        return await self._store.get(grant_id)

    def register_machine_grant(self, spec: MachineGrantSpec) -> str:
        """Know ``spec`` (its scope is used for every acquisition) without contacting anyone;
        a caller's first get creates the grant if :meth:`ensure_machine_grant` has not.
        Returns the grant id."""
        if self._machine is None:
            raise ConfigError("machine grants need a machine token source")
        if not spec.label or not spec.scope or not spec.issuer or not spec.client_id:
            raise InvalidArgument("label, scope, issuer and client_id must not be empty")
        self._machine_specs[spec.grant_id] = spec
        return spec.grant_id

    async def ensure_machine_grant(self, spec: MachineGrantSpec) -> Grant:
        """The machine grant of ``spec``, created (with its first access token) when the store
        has none: idempotent, under the grant's store lock, so replicas starting together
        create it once."""
        grant_id = self.register_machine_grant(spec)
        try:
            grant = await self._store.get(grant_id)
        except GrantNotFound:
            return await self._create_machine_grant(spec)
        self._check_machine(grant, spec)
        return grant

    @staticmethod
    def _check_machine(grant: Grant, spec: MachineGrantSpec) -> None:
        if grant.kind is not GrantKind.MACHINE or grant.label != spec.label:
            raise ConfigError(f"grant {grant.grant_id} is not the machine grant {spec.label!r}")

    async def _load(self, grant_id: str) -> Grant:
        try:
            return await self._store.get(grant_id)
        except GrantNotFound:
            spec = self._machine_specs.get(grant_id)
            if spec is None:
                raise
        return await self._create_machine_grant(spec)

    async def _create_machine_grant(self, spec: MachineGrantSpec) -> Grant:
        assert self._machine is not None
        grant_id = spec.grant_id
        async with self._store.refresh_lock(grant_id):
            try:
                grant = await self._store.get(grant_id)  # another task or replica was first
            except GrantNotFound:
                pass
            else:
                self._check_machine(grant, spec)
                return grant
            backoff = self._in_backoff(grant_id)
            if backoff is not None:
                raise backoff.error.with_traceback(None)
            try:
                tokens = await self._machine.acquire(label=spec.label, scope=spec.scope)
            except BrokerError as exc:
                self._note_failure(grant_id, exc)
                _warn_refresh_failed(grant_id, exc)
                raise
            now = self._clock.now()
            grant = Grant(
                grant_id=grant_id,
                label=spec.label,
                issuer=spec.issuer,
                client_id=spec.client_id,
                subject=spec.client_id,
                scope=tokens.scope,
                status=GrantStatus.ACTIVE,
                access_token=tokens.access_token,
                access_expires_at=tokens.expires_at,
                refresh_token=None,
                created_at=now,
                updated_at=now,
                access_issued_at=tokens.received_at,
                kind=GrantKind.MACHINE,
            )
            created = AuditEvent(
                AuditAction.GRANT_CREATED,
                "ok",
                grant_id=grant_id,
                label=spec.label,
                subject=spec.client_id,
            )
            await self._audit.require(created)
            try:
                await self._store.create(grant)
            except BrokerError as exc:
                await self._audit.note(
                    dataclasses.replace(created, outcome="error", reason=reason_code(exc.reason))
                )
                raise
            self._backoff.pop(grant_id, None)
            self._cache[grant_id] = self._entry(grant)
            self._remember_lifetime(grant_id, tokens)
            _log.info("machine grant created", extra={"grant_id": grant_id, "label": spec.label})
            return grant

    async def list_grants(self, label: str | None = None) -> list[Grant]:
        return await self._store.list(label=label)

    async def revoke_grant(self, grant_id: str) -> Grant:
        """Mark the grant REVOKED (waits for a refresh in flight); later gets raise GrantRevoked.
        Revocation at the AS (RFC 7009) is not done here: DOME has no revocation endpoint."""
        async with self._store.refresh_lock(grant_id):
            grant = await self._store.set_status(grant_id, GrantStatus.REVOKED, reason="revoked")
        self._bury(grant_id, GrantRevoked)
        await self._audit_grant(AuditAction.GRANT_REVOKED, grant, "ok", "revoked")
        _log.info("grant revoked", extra={"grant_id": grant_id, "label": grant.label})
        return grant

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-import emergency files (G04), recover refreshes interrupted by a crash (G02),
        then start the background refresher."""
        self._stopping = False
        await self.import_emergency()
        await self.recover_interrupted()
        self._background.start()

    async def stop(self) -> None:
        """Stop the background refresher, wait until every refresh in flight has finished
        persisting (J05), then write each refresh result the store still lacks to an emergency
        file (G04). Blocking callers still get refreshes after this."""
        self._stopping = True
        await self._background.stop()
        await self.wait_idle()
        await self.flush_emergency()

    # --- G04: results the store could not write --------------------------------------------

    @property
    def unpersisted_grants(self) -> frozenset[str]:
        """Grants holding a refresh result the store failed to write: non-empty = DEGRADED."""
        return frozenset(self._unpersisted)

    @property
    def degraded(self) -> bool:
        return bool(self._unpersisted)

    def _hold(self, grant_id: str, pending: _Unpersisted) -> None:
        self._unpersisted[grant_id] = pending
        self._notify_persistence()

    def _release(self, grant_id: str) -> None:
        if self._unpersisted.pop(grant_id, None) is not None:
            self._notify_persistence()

    def _notify_persistence(self) -> None:
        observer = self._persistence_observer
        if observer is not None:
            ids = frozenset(self._unpersisted)
            self._observe(lambda: observer.unpersisted_changed(ids))

    async def _write_emergency(self, grant_id: str, pending: _Unpersisted) -> bool:
        if self._emergency is None:
            return False
        try:
            await asyncio.to_thread(
                self._emergency.write, grant_id, pending.version, pending.tokens
            )
        except EmergencyFileError as exc:
            _log.critical(
                "the refresh result of grant %s is in memory only: %s", grant_id, exc.message
            )
            return False
        return True

    async def _remove_emergency(self, grant_id: str) -> None:
        if self._emergency is None:
            return
        try:
            await asyncio.to_thread(self._emergency.remove, grant_id)
        except EmergencyFileError as exc:
            # Harmless: on start an emergency record older than the store's is deleted.
            _log.warning("%s", exc.message)

    async def flush_emergency(self) -> list[str]:
        """Write every unpersisted refresh result to its emergency file; returns the grant
        ids written. A result that cannot be written is logged CRITICAL (it would be lost)."""
        written = []
        for grant_id, pending in list(self._unpersisted.items()):
            if await self._write_emergency(grant_id, pending):
                written.append(grant_id)
            elif self._emergency is None:
                _log.critical(
                    "grant %s: its newest refresh token was never stored and no emergency "
                    "directory is configured; it is lost at exit",
                    grant_id,
                )
        return written

    async def import_emergency(self) -> list[str]:
        """Store the records of every emergency file (G04); returns the grant ids stored.

        A file whose grant is gone, dead or already newer in the store is deleted. A record
        the store cannot take now is kept in memory (DEGRADED) and on disk: it is written
        before that grant's next refresh. An unreadable file is logged and left in place.
        """
        if self._emergency is None:
            return []
        try:
            paths = await asyncio.to_thread(self._emergency.paths)
        except EmergencyFileError as exc:
            _log.error("%s", exc.message)
            return []
        imported = []
        for path in paths:
            try:
                record = await asyncio.to_thread(self._emergency.read, path)
            except (EmergencyFileError, BrokerError) as exc:
                _log.error("emergency file not imported (kept): %s", exc.message)
                continue
            if await self._import_record(record):
                imported.append(record.grant_id)
        return imported

    async def _import_record(self, record: EmergencyRecord) -> bool:
        grant_id = record.grant_id
        pending = _Unpersisted(record.tokens, record.version)
        try:
            async with self._store.refresh_lock(grant_id):
                try:
                    grant = await self._store.get(grant_id)
                except GrantNotFound:
                    _log.warning("emergency record of deleted grant %s dropped", grant_id)
                    await self._remove_emergency(grant_id)
                    return False
                if grant.status is not GrantStatus.ACTIVE or grant.version > record.version:
                    _log.warning(
                        "emergency record of grant %s is obsolete (status %s, stored version "
                        "%d, record version %d): dropped",
                        grant_id,
                        grant.status.value,
                        grant.version,
                        record.version,
                    )
                    await self._remove_emergency(grant_id)
                    return False
                if grant.version < record.version:
                    _log.error(
                        "emergency record of grant %s is ahead of the store (version %d < %d):"
                        " kept, not imported",
                        grant_id,
                        grant.version,
                        record.version,
                    )
                    return False
                stored = await self._store.rotate(
                    grant_id, record.tokens, expected_version=record.version
                )
        except VersionConflict:
            _log.warning("emergency record of grant %s raced another rotation: dropped", grant_id)
            await self._remove_emergency(grant_id)
            return False
        except StoreError as exc:
            self._hold(grant_id, pending)
            _log.error(
                "emergency record of grant %s could not be stored yet (%s): kept in memory",
                grant_id,
                exc.reason,
            )
            return False
        self._release(grant_id)
        self._cache[grant_id] = self._entry(stored)
        self._remember_lifetime(grant_id, record.tokens)
        await self._remove_emergency(grant_id)
        _log.info("emergency record of grant %s imported into the store", grant_id)
        return True

    async def wait_idle(self) -> None:
        """Wait until no refresh is in flight."""
        while self._flights:
            await asyncio.wait(list(self._flights.values()))

    async def recover_interrupted(self) -> list[str]:
        """Refresh once every ACTIVE grant with an intent record; returns their ids. Failures
        are recorded (dead grants flagged), not raised."""
        grants = [
            g
            for g in await self._store.list()
            if g.status is GrantStatus.ACTIVE and g.refresh_started_at is not None
        ]
        results = await asyncio.gather(
            *(self._join(g.grant_id, self._min_serve_ttl) for g in grants),
            return_exceptions=True,
        )
        for grant, result in zip(grants, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, BrokerError):
                raise result
            if isinstance(result, BrokerError):
                _log.warning("recovery of grant %s failed: %s", grant.grant_id, result.reason)
        return [g.grant_id for g in grants]

    async def refresh_due_now(self) -> int:
        """One background pass (what the loop does every ``background_interval``)."""
        return await self._background.run_once()

    # --- internals: cache ------------------------------------------------------------------

    def _entry(self, grant: Grant) -> _Entry:
        now, mono = self._clock.now(), self._clock.monotonic()
        mono_expires = mono + (grant.access_expires_at - now)
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
            refresh_expires = self._rt_lifetime.expiry(
                issued_at=issued, access_expires_at=grant.access_expires_at
            )
        elif refresh_expires is None and self._rt_lifetime.kind is LifetimeKind.ACCESS:
            refresh_expires = grant.access_expires_at
        deadline = self._schedule.retry_deadline(refresh_expires)
        return _Entry(
            grant_id=grant.grant_id,
            version=grant.version,
            access_token=grant.access_token,
            expires_at=grant.access_expires_at,
            scope=grant.scope,
            subject=grant.subject,
            mono_expires=mono_expires,
            due_at=mono + (due - now),
            retry_until=None if deadline is None else mono + (deadline - now),
            refresh_expires_at=refresh_expires,
        )

    def _resolve(self, tokens: TokenSet) -> TokenSet:
        """Give a new refresh token without ``refresh_expires_in`` the configured lifetime."""
        if tokens.refresh_token is None or tokens.refresh_expires_at is not None:
            return tokens
        expiry = self._rt_lifetime.expiry(
            issued_at=tokens.received_at, access_expires_at=tokens.expires_at
        )
        return tokens if expiry is None else dataclasses.replace(tokens, refresh_expires_at=expiry)

    # --- the outage budget -----------------------------------------------------------------

    def outage_budget(self) -> float | None:
        """Seconds until the earliest refresh-token expiry among the active grants this
        process knows (every one after the first background pass); None when none is known.
        If the AS stays down longer, that grant dies."""
        return outage_budget(
            (e.refresh_expires_at for e in self._cache.values()), self._clock.now()
        )

    def grants_in_last_retry_window(self) -> int:
        """Grants whose last refresh failed and that are within ``refresh_threshold`` seconds
        of their retry deadline (or past it)."""
        mono = self._clock.monotonic()
        count = 0
        for grant_id in self._backoff:
            entry = self._cache.get(grant_id)
            if entry is not None and self._schedule.in_last_window(mono, entry.retry_until):
                count += 1
        return count

    def _admit(self, grant: Grant) -> _Entry:
        """Cache a grant read from the store (raising if it is dead); keeps the cached entry
        when it is the same version, publishes when it is newer."""
        self._check_status(grant)
        cached = self._cache.get(grant.grant_id)
        if cached is not None and cached.version >= grant.version:
            return cached
        entry = self._entry(grant)
        self._cache[grant.grant_id] = entry
        if cached is not None:
            self._publish(entry)
        return entry

    def _cap(self, grant_id: str, need: float) -> float:
        """A caller's minimum lifetime beyond what the AS issues cannot be met by refreshing:
        cap it at (issued lifetime - threshold), so such callers cause at most one refresh per
        ``refresh_threshold`` seconds instead of one per call."""
        lifetime = self._lifetimes.get(grant_id)
        if lifetime is None:
            return need
        return min(need, max(self._min_serve_ttl, lifetime - self._threshold))

    def _remember_lifetime(self, grant_id: str, tokens: TokenSet) -> None:
        self._lifetimes[grant_id] = tokens.expires_at - tokens.received_at

    def _remaining(self, entry: _Entry) -> float:
        return entry.mono_expires - self._clock.monotonic()

    def _state(self, entry: _Entry, need: float) -> Freshness:
        return freshness(
            entry.mono_expires, self._clock.monotonic(), threshold=self._threshold, min_ttl=need
        )

    def _serve(self, entry: _Entry, state: Freshness, *, cache_hit: bool) -> AccessToken:
        self._observe(
            lambda: self._observer.token_served(entry.grant_id, state, cache_hit=cache_hit)
        )
        return AccessToken(
            grant_id=entry.grant_id,
            access_token=entry.access_token,
            token_type=TOKEN_TYPE,
            expires_at=entry.expires_at,
            scope=entry.scope,
            subject=entry.subject,
            freshness=state,
        )

    def _publish(self, entry: _Entry) -> None:
        if self._watchers.wants(entry.grant_id):
            token = self._serve(entry, self._state(entry, self._min_serve_ttl), cache_hit=False)
            self._watchers.publish(entry.grant_id, token)

    # --- internals: dead grants ------------------------------------------------------------

    def _raise_if_dead(self, grant_id: str) -> None:
        error = self._dead.get(grant_id)
        if error is not None:
            raise error(f"grant {grant_id} needs re-authorization")

    def _check_status(self, grant: Grant) -> None:
        if grant.status is GrantStatus.REVOKED:
            self._bury(grant.grant_id, GrantRevoked)
        elif grant.status is GrantStatus.REAUTHORIZATION_REQUIRED:
            self._bury(grant.grant_id, ReauthorizationRequired)
        else:
            return
        self._raise_if_dead(grant.grant_id)

    def _bury(self, grant_id: str, error: type[ReauthorizationRequired]) -> None:
        """Forget the grant's tokens and end its watchers; later calls raise ``error``."""
        self._dead[grant_id] = error
        self._cache.pop(grant_id, None)
        self._release(grant_id)
        self._lifetimes.pop(grant_id, None)
        self._backoff.pop(grant_id, None)
        self._watchers.publish(grant_id, error)

    # --- internals: refresh ----------------------------------------------------------------

    def _in_backoff(self, grant_id: str) -> _Backoff | None:
        backoff = self._backoff.get(grant_id)
        if backoff is not None and self._clock.monotonic() < backoff.not_before:
            return backoff
        return None

    def _trigger_background(self, grant_id: str) -> None:
        if self._stopping or grant_id in self._flights or self._in_backoff(grant_id):
            return
        self._start_flight(grant_id, self._min_serve_ttl)

    async def _refresh_blocking(self, grant_id: str, need: float) -> _Entry:
        backoff = self._in_backoff(grant_id)
        if backoff is not None and grant_id not in self._flights:
            raise backoff.error.with_traceback(None)
        return await self._join(grant_id, need)

    async def _refresh_due(self, grant_id: str) -> _Entry:
        return await self._join(grant_id, self._min_serve_ttl)

    async def _find_due(self) -> list[str]:
        if self._stopping:
            return []
        due = []
        now = self._clock.monotonic()
        grants = await self._store.list()
        listed = {grant.grant_id for grant in grants}
        for grant_id in [g for g in self._cache if g not in listed and g not in self._flights]:
            del self._cache[grant_id]  # deleted from the store (by another replica or an operator)
        for grant in grants:
            if grant.status is not GrantStatus.ACTIVE:
                if grant.grant_id in self._cache:
                    self._check_status_quietly(grant)
                continue
            entry = self._admit(grant)
            if grant.grant_id in self._flights or self._in_backoff(grant.grant_id):
                continue
            if now >= entry.due_at:
                due.append(grant.grant_id)
        return due

    def _check_status_quietly(self, grant: Grant) -> None:
        with contextlib.suppress(ReauthorizationRequired):
            self._check_status(grant)

    async def _join(self, grant_id: str, need: float) -> _Entry:
        task = self._flights.get(grant_id)
        leader = task is None
        if task is None:
            task = self._start_flight(grant_id, need)
        else:
            self._observe(lambda: self._observer.single_flight_joined(grant_id))
        with self._tracer.start_as_current_span("tokens.single_flight_wait") as span:
            span.set_attribute("grant.id", grant_id)
            span.set_attribute("single_flight.leader", leader)
            return await asyncio.shield(task)

    def _start_flight(self, grant_id: str, need: float) -> asyncio.Task[_Entry]:
        task = asyncio.get_running_loop().create_task(
            self._flight(grant_id, need), name=f"refresh-{grant_id}"
        )
        self._flights[grant_id] = task
        task.add_done_callback(functools.partial(self._flight_done, grant_id))
        return task

    def _flight_done(self, grant_id: str, task: asyncio.Task[_Entry]) -> None:
        if self._flights.get(grant_id) is task:
            del self._flights[grant_id]
        if not task.cancelled():
            task.exception()  # retrieved: a background flight's failure is recorded, not lost

    async def _flight(self, grant_id: str, need: float) -> _Entry:
        started = self._clock.monotonic()
        outcome = RefreshOutcome.FAILED
        with self._tracer.start_as_current_span("tokens.refresh") as span:
            span.set_attribute("grant.id", grant_id)
            try:
                entry, outcome = await self._refresh_locked(grant_id, need, span)
                return entry
            except ReauthorizationRequired:
                outcome = RefreshOutcome.DEAD
                raise
            except TokenValidationError as exc:
                outcome = RefreshOutcome.REJECTED
                self._note_failure(grant_id, exc)
                _warn_refresh_failed(grant_id, exc)
                raise
            except BrokerError as exc:
                outcome = RefreshOutcome.RETRYABLE if exc.retryable else RefreshOutcome.FAILED
                self._note_failure(grant_id, exc)
                _warn_refresh_failed(grant_id, exc)
                raise
            finally:
                span.set_attribute("refresh.outcome", str(outcome))
                duration = self._clock.monotonic() - started
                final = outcome
                self._observe(
                    lambda: self._observer.refresh_finished(grant_id, final, duration=duration)
                )

    async def _refresh_locked(
        self, grant_id: str, need: float, span: trace.Span
    ) -> tuple[_Entry, RefreshOutcome]:
        async with self._store.refresh_lock(grant_id):
            grant = await self._store.get(grant_id)  # re-read: another replica may have refreshed
            self._check_status(grant)
            refresher = await self._refresher_for(grant)
            pending = self._unpersisted.get(grant_id)
            if pending is not None and pending.version != grant.version:
                # The store moved on (another replica rotated): its refresh token is newer.
                self._release(grant_id)
                await self._remove_emergency(grant_id)
            elif pending is not None:
                try:
                    grant = await self._store.rotate(
                        grant_id, pending.tokens, expected_version=grant.version
                    )
                except VersionConflict:
                    self._release(grant_id)
                    await self._remove_emergency(grant_id)
                    raise
                self._release(grant_id)
                await self._remove_emergency(grant_id)
                self._remember_lifetime(grant_id, pending.tokens)
                span.set_attribute("refresh.persisted_pending", True)
            entry = self._admit(grant)
            recovering = grant.refresh_started_at is not None
            span.set_attribute("refresh.recovering", recovering)
            if (
                not recovering
                and self._state(entry, need) is Freshness.FRESH
                and self._clock.monotonic() < entry.due_at
            ):
                self._backoff.pop(grant_id, None)
                return entry, RefreshOutcome.NOT_NEEDED
            if grant.kind is GrantKind.MACHINE:
                return await self._reacquire_locked(grant, span), RefreshOutcome.REFRESHED
            if grant.refresh_token is None:
                await self._store.set_status(
                    grant_id, GrantStatus.REAUTHORIZATION_REQUIRED, reason="no_refresh_token"
                )
                self._bury(grant_id, ReauthorizationRequired)
                await self._audit_grant(
                    AuditAction.GRANT_REAUTHORIZATION_REQUIRED, grant, "error", "no_refresh_token"
                )
                _log.warning(
                    "grant %s is dead: no refresh token; re-authorization required", grant_id
                )
                raise ReauthorizationRequired(f"grant {grant_id} has no refresh token")
            await self._store.mark_refresh_started(grant_id, self._clock.now())
            try:
                tokens = self._resolve(
                    await refresher.refresh(grant.refresh_token, subject=grant.subject)
                )
            except InvalidGrant as exc:
                span.set_attribute("oauth.error", exc.error)
                await self._store.set_status(
                    grant_id, GrantStatus.REAUTHORIZATION_REQUIRED, reason=exc.reason
                )
                self._bury(grant_id, ReauthorizationRequired)
                # A05: one event, by the refresh that flipped the status; later calls stop at
                # the dead-grant check and never get here again.
                await self._audit_grant(
                    AuditAction.GRANT_REAUTHORIZATION_REQUIRED, grant, "error", exc.reason
                )
                _log.warning(
                    "grant %s is dead: the authorization server answered HTTP %d (%s); "
                    "re-authorization required",
                    grant_id,
                    exc.status_code,
                    exc.reason,
                )
                raise ReauthorizationRequired(f"grant {grant_id} needs re-authorization") from exc
            except BrokerError as exc:
                if exc.retryable:
                    await self._record_error(grant_id, exc)
                elif isinstance(exc, TokenValidationError):
                    # B10: the response is dropped (nothing stored or served); one event.
                    await self._audit_grant(
                        AuditAction.TOKEN_REFRESH_REJECTED, grant, "error", exc.reason
                    )
                raise
            try:
                stored = await self._store.rotate(grant_id, tokens, expected_version=grant.version)
            except StoreError as exc:
                if isinstance(exc, VersionConflict):
                    raise  # rotated by someone else meanwhile: not ours to keep
                pending = _Unpersisted(tokens, grant.version)
                self._hold(grant_id, pending)
                span.set_attribute("refresh.unpersisted", True)
                await self._write_emergency(grant_id, pending)
                raise
            entry = self._entry(stored)
            self._cache[grant_id] = entry
            self._remember_lifetime(grant_id, tokens)
            self._backoff.pop(grant_id, None)
            self._publish(entry)
            _log.info("grant refreshed", extra={"grant_id": grant_id, "label": grant.label})
            return entry, RefreshOutcome.REFRESHED

    async def _reacquire_locked(self, grant: Grant, span: trace.Span) -> _Entry:
        """The renewal strategy of a machine grant (inside the refresh lock, after the same
        re-read and freshness check as a refresh): a new client credentials request."""
        grant_id = grant.grant_id
        if self._machine is None:
            exc = ConfigError(f"machine grant {grant_id} cannot be renewed: no machine source")
            await self._record_error(grant_id, exc)
            raise exc
        spec = self._machine_specs.get(grant_id)
        scope = spec.scope if spec is not None else grant.scope
        span.set_attribute("oauth.grant_type", "client_credentials")
        await self._store.mark_refresh_started(grant_id, self._clock.now())
        try:
            tokens = await self._machine.acquire(label=grant.label, scope=scope)
        except BrokerError as exc:
            # Retryable or not, the grant stays: a fixed credential or trust list makes the
            # next attempt (after the back-off) succeed. The reason is kept for operators.
            await self._record_error(grant_id, exc)
            raise
        tokens = dataclasses.replace(tokens, refresh_token=None, refresh_expires_at=None)
        try:
            stored = await self._store.rotate(grant_id, tokens, expected_version=grant.version)
        except StoreError as exc:
            if isinstance(exc, VersionConflict):
                raise
            # Nothing to lose: no refresh token was spent; the next attempt asks again.
            span.set_attribute("refresh.unpersisted", True)
            raise
        entry = self._entry(stored)
        self._cache[grant_id] = entry
        self._remember_lifetime(grant_id, tokens)
        self._backoff.pop(grant_id, None)
        self._publish(entry)
        _log.info("machine grant renewed", extra={"grant_id": grant_id, "label": grant.label})
        return entry

    async def _refresher_for(self, grant: Grant) -> Refresher:
        """The refresher of the identity that created ``grant`` (its own key and client_id).
        Refuse (before anything is sent) a grant of no identity this broker holds: its
        refresh token would go to the wrong AS or client. A machine grant renews only as the
        active identity."""
        target = self._deployment
        if self._routes is None or target is None:
            return self._refresher
        try:
            if grant.kind is GrantKind.MACHINE and not target.owns(grant.issuer, grant.client_id):
                raise DeploymentMismatch(
                    f"machine grant {grant.grant_id} is of "
                    f"{grant_owner_text(grant.issuer, grant.client_id)}; machine grants renew "
                    f"only as the active {grant_owner_text(target.issuer, target.client_id)}"
                )
            return self._routes.for_grant(grant.grant_id, grant.issuer, grant.client_id)
        except DeploymentMismatch as exc:
            _log.error("%s", exc.message)
            await self._record_error(grant.grant_id, exc)
            raise

    async def _audit_grant(
        self, action: AuditAction, grant: Grant, outcome: Outcome, reason: str
    ) -> None:
        """Best effort (retried once, then logged and counted): see audit_events."""
        await self._audit.note(
            AuditEvent(
                action,
                outcome,
                grant_id=grant.grant_id,
                label=identifier(grant.label),
                subject=identifier(grant.subject),
                reason=reason_code(reason),
            )
        )

    async def _record_error(self, grant_id: str, exc: BrokerError) -> None:
        try:
            await self._store.record_error(grant_id, exc.reason)
        except BrokerError as store_exc:
            _log.warning(
                "could not record refresh error for grant %s: %s", grant_id, store_exc.reason
            )

    def _note_failure(self, grant_id: str, exc: BrokerError) -> None:
        previous = self._backoff.get(grant_id)
        failures = previous.failures + 1 if previous else 1
        delay = min(self._backoff_max, self._backoff_initial * 2 ** (failures - 1))
        if isinstance(exc, AuthServerUnavailable) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self._backoff_max))
        delay *= 1 + self._jitter * self._rng.random()
        entry = self._cache.get(grant_id)
        not_before = self._schedule.next_attempt(
            self._clock.monotonic(), delay, None if entry is None else entry.retry_until
        )
        self._backoff[grant_id] = _Backoff(failures, not_before, exc)

    @staticmethod
    def _observe(hook: Callable[[], None]) -> None:
        try:
            hook()
        except Exception:
            _log.exception("token broker observer hook failed")


def _warn_refresh_failed(grant_id: str, exc: BrokerError) -> None:
    """Every failed refresh of a grant, once, by grant id and reason (never a token)."""
    _log.warning(
        "refresh of grant %s failed: %s (%s)",
        grant_id,
        exc.reason,
        "retryable" if exc.retryable else "not retryable: an operator has to act",
    )
