"""Serving: access tokens by grant, watching, adding, listing and revoking grants.

Freshness (:mod:`broker.tokens.freshness`, google-auth's ``TokenState`` shape) decides per
call: FRESH -> served from the in-memory cache (no store read); STALE -> served, and a refresh
starts in the background; INVALID (expired, or less left than ``max(min_ttl, min_serve_ttl)``)
-> the caller waits for a refresh (:mod:`broker.tokens.flight`). When that fails with a
retryable error the cached token keeps being served while it has more than ``min_serve_ttl``
left; after that the retryable error is raised (UNAVAILABLE at the gRPC layer) (A06).

Audit: ``grant.created`` is written before the grant is stored and fails the call when it
cannot be written (H01, fail closed); ``grant.revoked`` is written once, best effort.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator, Callable, Sequence

from opentelemetry import trace

from broker.audit.events import AuditAction, AuditEvent, reason_code
from broker.audit.trail import AuditTrail
from broker.clock import Clock
from broker.errors import (
    BrokerError,
    GrantExists,
    GrantRevoked,
    InvalidArgument,
    UnexpectedResponse,
)
from broker.oauth.types import TokenSet
from broker.tokens.cache import TokenCache
from broker.tokens.failures import audit_grant
from broker.tokens.flight import Flights
from broker.tokens.freshness import Freshness
from broker.tokens.machine import MachineGrants
from broker.tokens.model import AccessToken, Grant, GrantStatus, GrantSummary
from broker.tokens.stores.base import GrantStore
from broker.tokens.watch import Watchers

_log = logging.getLogger("broker.tokens.broker")  # the token core's log name

_MAX_ID_ATTEMPTS = 3


class Serving:
    def __init__(
        self,
        store: GrantStore,
        cache: TokenCache,
        flights: Flights,
        *,
        machine: MachineGrants,
        watchers: Watchers,
        audit: AuditTrail,
        tracer: trace.Tracer,
        clock: Clock,
        min_serve_ttl: float,
        id_factory: Callable[[], str],
    ) -> None:
        self._store = store
        self._cache = cache
        self._flights = flights
        self._machine = machine
        self._watchers = watchers
        self._audit = audit
        self._tracer = tracer
        self._clock = clock
        self._min_serve_ttl = min_serve_ttl
        self._id_factory = id_factory

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
        cache = self._cache
        need = cache.cap(grant_id, max(min_ttl, self._min_serve_ttl))
        with self._tracer.start_as_current_span("tokens.get") as span:
            span.set_attribute("grant.id", grant_id)
            cache.raise_if_dead(grant_id)
            entry = cache.get(grant_id)
            cache_hit = entry is not None
            if entry is None:
                entry = cache.admit(await self._machine.load(grant_id))
            state = cache.state(entry, need)
            span.set_attribute("token.freshness", str(state))
            span.set_attribute("cache.hit", cache_hit)
            if state is Freshness.FRESH:
                return cache.serve(entry, state, cache_hit=cache_hit)
            if state is Freshness.STALE:
                self._flights.trigger(grant_id)
                return cache.serve(entry, state, cache_hit=cache_hit)
            try:
                entry = await self._flights.blocking(grant_id, need)
            except BrokerError as exc:
                if not exc.retryable:
                    raise
                fallback = cache.get(grant_id)
                if fallback is not None and cache.remaining(fallback) > self._min_serve_ttl:
                    span.set_attribute("token.fallback", True)
                    return cache.serve(fallback, Freshness.STALE, cache_hit=True)
                raise
            if cache.remaining(entry) <= self._min_serve_ttl:
                raise UnexpectedResponse(
                    "the authorization server issued a token shorter than the minimum lifetime"
                )
            return cache.serve(entry, cache.state(entry, self._min_serve_ttl), cache_hit=False)

    def watch(self, grant_id: str) -> AsyncGenerator[AccessToken, None]:
        """Yield the current token, then each new one after a refresh (including one found in
        the store by the background pass). Ends by raising ReauthorizationRequired (or
        GrantRevoked) when the grant dies. The queue is bounded: a slow watcher skips
        intermediate tokens and gets the newest."""
        return self._watchers.stream(grant_id, lambda: self.get_access_token(grant_id))

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
        tokens = self._cache.resolve(tokens)
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
            self._cache.put(grant, tokens)
            return grant

    async def get_grant(self, grant_id: str) -> Grant:
        return await self._store.get(grant_id)

    async def list_grants(self, label: str | None = None) -> Sequence[Grant | GrantSummary]:
        """The grants' clear columns (ListGrants shows no token): a store that indexes them
        answers without opening any token; another store's grants are opened and listed."""
        list_metadata = getattr(self._store, "list_metadata", None)
        if callable(list_metadata):
            summaries: list[GrantSummary] = await list_metadata(label=label)
            return summaries
        return await self._store.list(label=label)

    async def revoke_grant(self, grant_id: str) -> Grant:
        """Mark the grant REVOKED (waits for a refresh in flight); later gets raise GrantRevoked.
        Revocation at the AS (RFC 7009) is not done here: DOME has no revocation endpoint."""
        async with self._store.refresh_lock(grant_id):
            grant = await self._store.set_status(grant_id, GrantStatus.REVOKED, reason="revoked")
        self._cache.bury(grant_id, GrantRevoked)
        await audit_grant(self._audit, AuditAction.GRANT_REVOKED, grant, "ok", "revoked")
        _log.info("grant revoked", extra={"grant_id": grant_id, "label": grant.label})
        return grant
