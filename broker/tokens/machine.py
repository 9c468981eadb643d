"""Machine grants (``GrantKind.MACHINE``, DOME machine-to-machine).

Configured (label, scope) pairs made by :meth:`MachineGrants.ensure` under a stable grant id
derived from the deployment and the label (:func:`machine_grant_id`), so every start and every
replica finds the same grant. They have no refresh token: renewal is a new client credentials
request through the :class:`broker.tokens.ports.MachineTokenSource`, chosen by the grant's kind
inside the same single flight, store lock, schedule, back-off and fallback as a refresh. A
rejection (credential refused locally, the Verifier's empty 403, ``invalid_client``) is not
retryable and recorded as the grant's last error; it does not kill the grant: the next attempt
after the back-off may succeed once an operator fixed the cause. A machine grant has no
refresh-token expiry, so it is not in the outage budget.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
from dataclasses import dataclass

from opentelemetry import trace

from broker.audit.events import AuditAction, AuditEvent, reason_code
from broker.audit.trail import AuditTrail
from broker.clock import Clock
from broker.errors import (
    BrokerError,
    ConfigError,
    GrantNotFound,
    InvalidArgument,
    StoreError,
    VersionConflict,
)
from broker.tokens.cache import CacheEntry, TokenCache
from broker.tokens.failures import record_error, warn_refresh_failed
from broker.tokens.flight import Backoffs
from broker.tokens.model import Grant, GrantKind, GrantStatus
from broker.tokens.ports import MachineTokenSource
from broker.tokens.stores.base import GrantStore

_log = logging.getLogger("broker.tokens.broker")  # the token core's log name

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


class MachineGrants:
    def __init__(
        self,
        store: GrantStore,
        source: MachineTokenSource | None,
        cache: TokenCache,
        *,
        backoffs: Backoffs,
        audit: AuditTrail,
        clock: Clock,
    ) -> None:
        self._store = store
        self._source = source
        self._cache = cache
        self._backoffs = backoffs
        self._audit = audit
        self._clock = clock
        self._specs: dict[str, MachineGrantSpec] = {}

    def register(self, spec: MachineGrantSpec) -> str:
        """Know ``spec`` (its scope is used for every acquisition) without contacting anyone;
        a caller's first get creates the grant if :meth:`ensure` has not. Returns the id."""
        if self._source is None:
            raise ConfigError("machine grants need a machine token source")
        if not spec.label or not spec.scope or not spec.issuer or not spec.client_id:
            raise InvalidArgument("label, scope, issuer and client_id must not be empty")
        self._specs[spec.grant_id] = spec
        return spec.grant_id

    async def ensure(self, spec: MachineGrantSpec) -> Grant:
        """The machine grant of ``spec``, created (with its first access token) when the store
        has none: idempotent, under the grant's store lock, so replicas starting together
        create it once."""
        grant_id = self.register(spec)
        try:
            grant = await self._store.get(grant_id)
        except GrantNotFound:
            return await self._create(spec)
        _check(grant, spec)
        return grant

    async def load(self, grant_id: str) -> Grant:
        """The stored grant; a registered machine grant the store lacks is created."""
        try:
            return await self._store.get(grant_id)
        except GrantNotFound:
            spec = self._specs.get(grant_id)
            if spec is None:
                raise
        return await self._create(spec)

    async def _create(self, spec: MachineGrantSpec) -> Grant:
        assert self._source is not None
        grant_id = spec.grant_id
        async with self._store.refresh_lock(grant_id):
            try:
                grant = await self._store.get(grant_id)  # another task or replica was first
            except GrantNotFound:
                pass
            else:
                _check(grant, spec)
                return grant
            failure = self._backoffs.active(grant_id)
            if failure is not None:
                raise failure.error.with_traceback(None)
            try:
                tokens = await self._source.acquire(label=spec.label, scope=spec.scope)
            except BrokerError as exc:
                entry = self._cache.get(grant_id)
                self._backoffs.note_failure(
                    grant_id, exc, None if entry is None else entry.retry_until
                )
                warn_refresh_failed(grant_id, exc)
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
            self._backoffs.clear(grant_id)
            self._cache.put(grant, tokens)
            _log.info("machine grant created", extra={"grant_id": grant_id, "label": spec.label})
            return grant

    async def renew_locked(self, grant: Grant, span: trace.Span) -> CacheEntry:
        """The renewal strategy of a machine grant (inside the refresh lock, after the same
        re-read and freshness check as a refresh): a new client credentials request."""
        grant_id = grant.grant_id
        if self._source is None:
            exc = ConfigError(f"machine grant {grant_id} cannot be renewed: no machine source")
            await record_error(self._store, grant_id, exc)
            raise exc
        spec = self._specs.get(grant_id)
        scope = spec.scope if spec is not None else grant.scope
        span.set_attribute("oauth.grant_type", "client_credentials")
        await self._store.mark_refresh_started(grant_id, self._clock.now())
        try:
            tokens = await self._source.acquire(label=grant.label, scope=scope)
        except BrokerError as exc:
            # Retryable or not, the grant stays: a fixed credential or trust list makes the
            # next attempt (after the back-off) succeed. The reason is kept for operators.
            await record_error(self._store, grant_id, exc)
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
        entry = self._cache.put(stored, tokens)
        self._backoffs.clear(grant_id)
        self._cache.publish(entry)
        _log.info("machine grant renewed", extra={"grant_id": grant_id, "label": grant.label})
        return entry


def _check(grant: Grant, spec: MachineGrantSpec) -> None:
    if grant.kind is not GrantKind.MACHINE or grant.label != spec.label:
        raise ConfigError(f"grant {grant.grant_id} is not the machine grant {spec.label!r}")
