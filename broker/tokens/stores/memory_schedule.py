"""Due times, due queries and refresh claims of the in-memory grant store.

:class:`MemorySchedule` is the :class:`broker.tokens.stores.base.GrantIndex` and
:class:`broker.tokens.stores.base.RefreshClaims` half of
:class:`broker.tokens.stores.memory.MemoryGrantStore` (mixed into it), as ``sqlite_schedule`` and
``postgres_schedule`` are for the SQL stores: one :class:`ScheduleEntry` per grant holds what the
SQL stores keep in clear columns (``refresh_due_at``, ``claimed_by``, ``claim_until``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from broker.tokens.model import Grant, GrantStatus, GrantSummary
from broker.tokens.stores.due import DueRule, due_at
from broker.tokens.stores.validation import (
    check_claim,
    check_due_query,
    check_grant_id,
    check_label,
    check_status,
)


@dataclasses.dataclass
class ScheduleEntry:
    """A grant's refresh due time and its claim (owner and lease end), if any."""

    due_at: float
    claimed_by: str | None = None
    claim_until: float | None = None


class MemorySchedule:
    """Due times, due queries and claims; mixed into the memory grant store."""

    if TYPE_CHECKING:
        _grants: dict[str, Grant]
        _sched: dict[str, ScheduleEntry]
        _due_rule: DueRule

        def _enter(self, operation: str) -> None: ...

    def _due(self, grant_id: str, version: int, issued: float | None, expires: float) -> float:
        return due_at(self._due_rule, grant_id, version, issued_at=issued, expires_at=expires)

    def _sched_of(self, grant: Grant) -> ScheduleEntry:
        sched = self._sched.get(grant.grant_id)
        if sched is None:  # a grant put in place without create()
            sched = self._sched[grant.grant_id] = ScheduleEntry(
                self._due(
                    grant.grant_id, grant.version, grant.access_issued_at, grant.access_expires_at
                )
            )
        return sched

    def _summary(self, grant: Grant) -> GrantSummary:
        sched = self._sched_of(grant)
        return GrantSummary(
            grant_id=grant.grant_id,
            label=grant.label,
            issuer=grant.issuer,
            client_id=grant.client_id,
            subject=grant.subject,
            scope=grant.scope,
            status=grant.status,
            kind=grant.kind,
            version=grant.version,
            access_expires_at=grant.access_expires_at,
            access_issued_at=grant.access_issued_at,
            refresh_expires_at=grant.refresh_expires_at,
            refresh_started_at=grant.refresh_started_at,
            refresh_due_at=sched.due_at,
            created_at=grant.created_at,
            updated_at=grant.updated_at,
            last_error=grant.last_error,
            claimed_by=sched.claimed_by,
            claim_until=sched.claim_until,
        )

    async def list_metadata(self, *, label: str | None = None) -> list[GrantSummary]:
        self._enter("list_metadata")
        if label is not None:
            check_label(label)
        return [
            self._summary(g)
            for _, g in sorted(self._grants.items())
            if label is None or g.label == label
        ]

    async def count_by_status(self, status: GrantStatus) -> int:
        self._enter("count_by_status")
        check_status(status)
        return sum(1 for g in self._grants.values() if g.status is status)

    def _due_now(self, now: float, horizon: float, limit: int) -> list[Grant]:
        due = [
            g
            for g in self._grants.values()
            if g.status is GrantStatus.ACTIVE and self._sched_of(g).due_at <= now + horizon
        ]
        due.sort(key=lambda g: (self._sched_of(g).due_at, g.grant_id))
        return due[:limit] if limit < len(due) else due

    async def reschedule(self, rule: DueRule) -> int:
        if rule == self._due_rule:
            return 0
        self._due_rule = rule
        active = [g for g in self._grants.values() if g.status is GrantStatus.ACTIVE]
        for g in active:
            self._sched_of(g).due_at = self._due(
                g.grant_id, g.version, g.access_issued_at, g.access_expires_at
            )
        return len(active)

    async def due(
        self, now: float, *, horizon: float = 0.0, limit: int = 1000
    ) -> list[GrantSummary]:
        self._enter("due")
        now, horizon, limit = check_due_query(now, horizon, limit)
        return [self._summary(g) for g in self._due_now(now, horizon, limit)]

    async def claim_due(
        self, now: float, *, owner: str, lease: float, horizon: float = 0.0, limit: int = 1000
    ) -> list[GrantSummary]:
        self._enter("claim_due")
        now, horizon, limit = check_due_query(now, horizon, limit)
        owner, lease = check_claim(owner, lease)

        def free(sched: ScheduleEntry) -> bool:
            until = sched.claim_until
            return until is None or until <= now

        candidates = [
            g
            for g in self._due_now(now, horizon, len(self._grants) or 1)
            if free(self._sched_of(g))
        ][:limit]
        for g in candidates:
            sched = self._sched_of(g)
            sched.claimed_by, sched.claim_until = owner, now + lease
        return [self._summary(g) for g in candidates]

    async def release_claim(self, grant_id: str, *, owner: str) -> None:
        self._enter("release_claim")
        check_grant_id(grant_id)
        owner, _ = check_claim(owner, 1.0)
        sched = self._sched.get(grant_id)
        if sched is not None and sched.claimed_by == owner:
            sched.claimed_by = sched.claim_until = None
