"""The refresh path of one grant (RFC 6749 section 6): what a flight runs.

Under ``store.refresh_lock`` (cross-replica with PostgreSQL): re-read the grant (another
replica may have refreshed it: G07) -> write a held unpersisted result first (G04) -> if the
token is still fresh and not due, nothing -> ``mark_refresh_started`` (durable intent, G02) ->
``Refresher.refresh`` (or, for a machine grant, a client credentials request) -> ``store.rotate``
(the new refresh token is durable before the new access token leaves: A08b) -> cache ->
watchers.

Failures: ``InvalidGrant`` -> the grant is flagged REAUTHORIZATION_REQUIRED once, and every
later call raises :class:`broker.errors.ReauthorizationRequired` without contacting the AS
(A05). ``TokenValidationError`` -> grant unchanged, one ``token.refresh_rejected`` event (B10).
Retryable errors -> ``store.record_error`` and a back-off (:mod:`broker.tokens.flight`).
``store.rotate`` failing -> the result is held (:mod:`broker.tokens.persistence`).
"""

from __future__ import annotations

import logging

from opentelemetry import trace

from broker.audit.events import AuditAction
from broker.clock import Clock
from broker.errors import (
    BrokerError,
    DeploymentMismatch,
    InvalidGrant,
    ReauthorizationRequired,
    StoreError,
    TokenValidationError,
    VersionConflict,
)
from broker.tokens.cache import CacheEntry, TokenCache, observe
from broker.tokens.failures import audit_grant, record_error, warn_refresh_failed
from broker.tokens.flight import Backoffs
from broker.tokens.machine import MachineGrants
from broker.tokens.model import Grant, GrantKind, GrantStatus
from broker.tokens.observer import RefreshOutcome
from broker.tokens.persistence import PendingResults, Unpersisted
from broker.tokens.ports import Refresher
from broker.tokens.routing import GrantRouting
from broker.tokens.settings import Reporting
from broker.tokens.stores.base import GrantStore

_log = logging.getLogger("broker.tokens.broker")  # the token core's log name


class RefreshPath:
    def __init__(
        self,
        store: GrantStore,
        cache: TokenCache,
        pending: PendingResults,
        *,
        backoffs: Backoffs,
        routing: GrantRouting,
        machine: MachineGrants,
        reporting: Reporting,
        clock: Clock,
    ) -> None:
        self._store = store
        self._cache = cache
        self._pending = pending
        self._backoffs = backoffs
        self._routing = routing
        self._machine = machine
        self._reporting = reporting
        self._tracer = reporting.tracer()
        self._clock = clock

    async def run(self, grant_id: str, need: float) -> CacheEntry:
        """One refresh of ``grant_id`` (the body of its single flight), in a span, with its
        outcome reported and a failure noted for the back-off."""
        started = self._clock.monotonic()
        outcome = RefreshOutcome.FAILED
        with self._tracer.start_as_current_span("tokens.refresh") as span:
            span.set_attribute("grant.id", grant_id)
            try:
                entry, outcome = await self._locked(grant_id, need, span)
                return entry
            except ReauthorizationRequired:
                outcome = RefreshOutcome.DEAD
                raise
            except TokenValidationError as exc:
                outcome = RefreshOutcome.REJECTED
                self._failed(grant_id, exc)
                raise
            except BrokerError as exc:
                outcome = RefreshOutcome.RETRYABLE if exc.retryable else RefreshOutcome.FAILED
                self._failed(grant_id, exc)
                raise
            finally:
                span.set_attribute("refresh.outcome", str(outcome))
                duration = self._clock.monotonic() - started
                final = outcome
                observer = self._reporting.observer
                observe(lambda: observer.refresh_finished(grant_id, final, duration=duration))

    def _failed(self, grant_id: str, exc: BrokerError) -> None:
        entry = self._cache.get(grant_id)
        self._backoffs.note_failure(grant_id, exc, None if entry is None else entry.retry_until)
        warn_refresh_failed(grant_id, exc)

    async def _locked(
        self, grant_id: str, need: float, span: trace.Span
    ) -> tuple[CacheEntry, RefreshOutcome]:
        async with self._store.refresh_lock(grant_id):
            grant = await self._store.get(grant_id)  # re-read: another replica may have refreshed
            self._cache.check_status(grant)
            refresher = await self._refresher_for(grant)
            grant = await self._write_pending(grant, span)
            entry = self._cache.admit(grant)
            recovering = grant.refresh_started_at is not None
            span.set_attribute("refresh.recovering", recovering)
            if not recovering and self._cache.fresh_and_not_due(entry, need):
                self._backoffs.clear(grant_id)
                return entry, RefreshOutcome.NOT_NEEDED
            if grant.kind is GrantKind.MACHINE:
                return await self._machine.renew_locked(grant, span), RefreshOutcome.REFRESHED
            return await self._refresh_locked(grant, refresher, span), RefreshOutcome.REFRESHED

    async def _write_pending(self, grant: Grant, span: trace.Span) -> Grant:
        """Store a held result first: its refresh token may be the only valid one."""
        grant_id = grant.grant_id
        pending = self._pending.get(grant_id)
        if pending is None:
            return grant
        if pending.version != grant.version:
            # The store moved on (another replica rotated): its refresh token is newer.
            await self._pending.drop(grant_id)
            return grant
        try:
            stored = await self._store.rotate(
                grant_id, pending.tokens, expected_version=grant.version
            )
        except VersionConflict:
            await self._pending.drop(grant_id)
            raise
        await self._pending.drop(grant_id)
        self._cache.remember_lifetime(grant_id, pending.tokens)
        span.set_attribute("refresh.persisted_pending", True)
        return stored

    async def _refresh_locked(
        self, grant: Grant, refresher: Refresher, span: trace.Span
    ) -> CacheEntry:
        grant_id = grant.grant_id
        if grant.refresh_token is None:
            await self._kill(grant, "no_refresh_token")
            _log.warning("grant %s is dead: no refresh token; re-authorization required", grant_id)
            raise ReauthorizationRequired(f"grant {grant_id} has no refresh token")
        await self._store.mark_refresh_started(grant_id, self._clock.now())
        try:
            tokens = self._cache.resolve(
                await refresher.refresh(grant.refresh_token, subject=grant.subject)
            )
        except InvalidGrant as exc:
            span.set_attribute("oauth.error", exc.error)
            # A05: one event, by the refresh that flipped the status; later calls stop at the
            # dead-grant check and never get here again.
            await self._kill(grant, exc.reason)
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
                await record_error(self._store, grant_id, exc)
            elif isinstance(exc, TokenValidationError):
                # B10: the response is dropped (nothing stored or served); one event.
                await audit_grant(
                    self._reporting.audit,
                    AuditAction.TOKEN_REFRESH_REJECTED,
                    grant,
                    "error",
                    exc.reason,
                )
            raise
        try:
            stored = await self._store.rotate(grant_id, tokens, expected_version=grant.version)
        except StoreError as exc:
            if isinstance(exc, VersionConflict):
                raise  # rotated by someone else meanwhile: not ours to keep
            span.set_attribute("refresh.unpersisted", True)
            await self._pending.keep(grant_id, Unpersisted(tokens, grant.version))
            raise
        entry = self._cache.put(stored, tokens)
        self._backoffs.clear(grant_id)
        self._cache.publish(entry)
        _log.info("grant refreshed", extra={"grant_id": grant_id, "label": grant.label})
        return entry

    async def _kill(self, grant: Grant, reason: str) -> None:
        """Flag the grant REAUTHORIZATION_REQUIRED (its refresh token is never sent again)."""
        await self._store.set_status(
            grant.grant_id, GrantStatus.REAUTHORIZATION_REQUIRED, reason=reason
        )
        self._cache.bury(grant.grant_id, ReauthorizationRequired)
        await audit_grant(
            self._reporting.audit,
            AuditAction.GRANT_REAUTHORIZATION_REQUIRED,
            grant,
            "error",
            reason,
        )

    async def _refresher_for(self, grant: Grant) -> Refresher:
        try:
            return self._routing.refresher_for(grant)
        except DeploymentMismatch as exc:
            _log.error("%s", exc.message)
            await record_error(self._store, grant.grant_id, exc)
            raise
