"""An in-memory :class:`broker.tokens.stores.base.GrantStore` for the token core's unit tests.

Same contract as the SQLite and PostgreSQL stores (the contract suite runs against all three),
except durability and sealing: everything lives in process memory. ``refresh_lock`` is a
per-grant :class:`asyncio.Lock`.

Binding: like the SQL stores, a store created with an ``identity`` records it (as its
primary identity) and a store opened with another one is refused with
:class:`broker.errors.DeploymentMismatch`. ``MemoryGrantStore(..., shared_with=other)`` opens
the same in-memory data again (as a second process would open the same database), so the
contract suite can test reopening.

Every operation starts with ``_enter(name)``: the check that the store is still open.

Layout: this module holds the store (binding, grant CRUD, the identity ledger, the refresh
lock); due times, due queries and claims are mixed in from
:class:`broker.tokens.stores.memory_schedule.MemorySchedule`, status changes (the feed every
replica's cache polls) from :class:`broker.tokens.stores.memory_changes.MemoryChanges`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from broker.clock import Clock, SystemClock
from broker.errors import (
    GrantExists,
    GrantNotFound,
    InvalidArgument,
    StoreError,
    VersionConflict,
)
from broker.oauth.types import TokenSet
from broker.tokens.model import Grant, GrantStatus
from broker.tokens.stores.deployment import (
    DeploymentIdentity,
    IdentityRole,
    IdentityState,
    RecordedHow,
    RecordedIdentity,
    check_binding,
    check_grant_owner,
    log_adoption,
)
from broker.tokens.stores.due import DEFAULT_DUE_RULE, DueRule
from broker.tokens.stores.keyed_locks import KeyedLocks
from broker.tokens.stores.memory_changes import MemoryChanges, StatusLog
from broker.tokens.stores.memory_schedule import MemorySchedule, ScheduleEntry
from broker.tokens.stores.validation import (
    check_expected_version,
    check_grant_id,
    check_label,
    check_reason,
    check_status,
    check_time,
    validate_grant,
    validate_tokens,
)


def _not_found(grant_id: str) -> GrantNotFound:
    return GrantNotFound(f"no grant {grant_id!r}")


class MemoryGrantStore(MemorySchedule, MemoryChanges):
    """GrantStore in a dict. Not durable, not shared between processes."""

    SCHEMA_VERSION = 9  # as the SQL stores (identity 2, expiry 3, logins 4, kind 5, rotation 6,
    # scheduling 7, status index 8, status changes 9)

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        identity: DeploymentIdentity | None = None,
        record_identity: bool = True,
        shared_with: MemoryGrantStore | None = None,
        due_rule: DueRule = DEFAULT_DUE_RULE,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        fresh = shared_with is None
        self._grants: dict[str, Grant] = {} if shared_with is None else shared_with._grants
        # grant id -> [refresh_due_at, claimed_by, claim_until] (the SQL stores' clear columns)
        self._sched: dict[str, ScheduleEntry] = {} if shared_with is None else shared_with._sched
        self._status_log = StatusLog() if shared_with is None else shared_with._status_log
        self._due_rule = due_rule
        self._recorded: list[RecordedIdentity] = (
            [] if shared_with is None else shared_with._recorded
        )
        self._owners: tuple[DeploymentIdentity, ...] = tuple(r.identity for r in self._recorded)
        if identity is not None:
            owners = {(g.issuer, g.client_id) for g in self._grants.values()}
            record = check_binding(self._recorded, identity, grant_owners=owners, where="in memory")
            if record and record_identity:
                how = RecordedHow.CREATED if fresh else RecordedHow.ADOPTED
                self._recorded.append(
                    RecordedIdentity(
                        identity, IdentityRole.PRIMARY, how, self.SCHEMA_VERSION, self._clock.now()
                    )
                )
                if not fresh:
                    log_adoption("in memory", identity, len(self._grants))
            self._owners = (*self._owners, identity)
        self._locks = KeyedLocks()
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryGrantStore(grants={len(self._grants)})"

    def _enter(self, operation: str) -> None:
        """Run first by every operation: the store is open. ``operation`` names the call (for a
        subclass that hooks in here)."""
        if self._closed:
            raise StoreError("the grant store is closed")

    def _current(self, grant_id: str) -> Grant:
        try:
            return self._grants[grant_id]
        except KeyError:
            raise _not_found(grant_id) from None

    async def create(self, grant: Grant) -> None:
        self._enter("create")
        validate_grant(grant)
        check_grant_owner(self._owners, grant.issuer, grant.client_id, grant.grant_id)
        if grant.grant_id in self._grants:
            raise GrantExists(f"grant {grant.grant_id!r} already exists")
        self._grants[grant.grant_id] = dataclasses.replace(grant, id_claims=dict(grant.id_claims))
        self._sched[grant.grant_id] = ScheduleEntry(
            self._due(
                grant.grant_id, grant.version, grant.access_issued_at, grant.access_expires_at
            )
        )

    async def get(self, grant_id: str) -> Grant:
        self._enter("get")
        return self._current(check_grant_id(grant_id))

    async def list(self, *, label: str | None = None) -> list[Grant]:
        self._enter("list")
        if label is not None:
            check_label(label)
        return [g for _, g in sorted(self._grants.items()) if label is None or g.label == label]

    async def mark_refresh_started(self, grant_id: str, at: float) -> None:
        self._enter("mark_refresh_started")
        at = check_time("at", at)
        grant = self._current(check_grant_id(grant_id))
        self._grants[grant_id] = dataclasses.replace(
            grant, refresh_started_at=at, updated_at=self._clock.now()
        )

    async def rotate(
        self,
        grant_id: str,
        tokens: TokenSet,
        *,
        expected_version: int,
        refresh_due_at: float | None = None,
    ) -> Grant:
        self._enter("rotate")
        check_grant_id(grant_id)
        check_expected_version(expected_version)
        validate_tokens(tokens)
        if refresh_due_at is not None:
            refresh_due_at = check_time("refresh_due_at", refresh_due_at)
        grant = self._current(grant_id)
        if grant.version != expected_version:
            raise VersionConflict(
                f"grant {grant_id!r} is at version {grant.version}, not {expected_version}"
            )
        new = dataclasses.replace(
            grant,
            access_token=tokens.access_token,
            access_expires_at=float(tokens.expires_at),
            refresh_token=tokens.refresh_token
            if tokens.refresh_token is not None
            else grant.refresh_token,
            scope=tokens.scope or grant.scope,
            id_claims=dict(tokens.id_claims) if tokens.id_claims else grant.id_claims,
            version=grant.version + 1,
            refresh_started_at=None,
            last_error=None,
            updated_at=self._clock.now(),
            access_issued_at=float(tokens.received_at),
            refresh_expires_at=tokens.refresh_expires_at
            if tokens.refresh_token is not None or tokens.refresh_expires_at is not None
            else grant.refresh_expires_at,
        )
        self._grants[grant_id] = new
        self._sched[grant_id] = ScheduleEntry(
            self._due(grant_id, new.version, new.access_issued_at, new.access_expires_at)
            if refresh_due_at is None
            else refresh_due_at
        )
        return new

    async def set_status(self, grant_id: str, status: GrantStatus, *, reason: str | None) -> Grant:
        self._enter("set_status")
        check_grant_id(grant_id)
        check_status(status)
        if reason is not None:
            check_reason(reason)
        grant = self._current(grant_id)
        new = dataclasses.replace(
            grant,
            status=status,
            last_error=reason,
            refresh_started_at=None,
            updated_at=self._clock.now(),
        )
        self._grants[grant_id] = new
        self._status_changed(grant, new)
        sched = self._sched_of(new)
        sched.claimed_by = sched.claim_until = None
        return new

    async def record_error(self, grant_id: str, reason: str) -> None:
        self._enter("record_error")
        check_grant_id(grant_id)
        check_reason(reason)
        grant = self._current(grant_id)
        self._grants[grant_id] = dataclasses.replace(
            grant, last_error=reason, updated_at=self._clock.now()
        )

    async def delete(self, grant_id: str) -> None:
        self._enter("delete")
        check_grant_id(grant_id)
        if self._grants.pop(grant_id, None) is None:
            raise _not_found(grant_id)
        self._sched.pop(grant_id, None)

    def refresh_lock(self, grant_id: str) -> AbstractAsyncContextManager[None]:
        check_grant_id(grant_id)
        return self._refresh_lock(grant_id)

    @asynccontextmanager
    async def _refresh_lock(self, grant_id: str) -> AsyncIterator[None]:
        self._enter("refresh_lock")
        async with self._locks.hold(grant_id):
            yield

    async def ping(self) -> None:
        self._enter("ping")

    async def identities(self) -> Sequence[RecordedIdentity]:
        """The deployment identities recorded in this store (primary first)."""
        return list(self._recorded)

    async def add_identity(
        self, identity: DeploymentIdentity, *, state: IdentityState, key_uri: str | None
    ) -> RecordedIdentity:
        """IdentityLedger: record a further identity (a key-rotation ceremony)."""
        self._enter("add_identity")
        if any(r.identity == identity for r in self._recorded):
            raise InvalidArgument(f"the identity {identity.describe()} is recorded already")
        added = RecordedIdentity(
            identity,
            IdentityRole.ADDED,
            RecordedHow.CEREMONY,
            self.SCHEMA_VERSION,
            self._clock.now(),
            state=state,
            key_uri=key_uri,
        )
        self._recorded.append(added)
        return added

    async def set_identity(
        self,
        identity: DeploymentIdentity,
        *,
        state: IdentityState | None = None,
        key_uri: str | None = None,
    ) -> RecordedIdentity:
        """IdentityLedger: change an identity's rotation state and/or key URI."""
        self._enter("set_identity")
        for index, recorded in enumerate(self._recorded):
            if recorded.identity == identity:
                changed = dataclasses.replace(
                    recorded,
                    state=recorded.state if state is None else state,
                    key_uri=recorded.key_uri if key_uri is None else key_uri,
                )
                self._recorded[index] = changed
                return changed
        raise InvalidArgument(f"the identity {identity.describe()} is not recorded")

    async def close(self) -> None:
        self._closed = True
