"""The grant store interface. Implementations: ``sqlite.py`` (embedded default) and
``postgres.py`` (several replicas). One contract suite runs against both.

Guarantees every implementation gives:
- ``rotate`` is one transaction; once it returns, the new refresh token is durable
  (SQLite: WAL + synchronous=FULL; PostgreSQL: a committed transaction) before the new access
  token is handed to anyone.
- refresh and access tokens are sealed at rest (AES-256-GCM via a :class:`broker.keys.api.Sealer`,
  the grant id as associated data): a copied database file reveals no token.
- ``refresh_lock`` serialises refreshes of one grant: within the process for SQLite, across
  replicas for PostgreSQL (an advisory lock held for the whole refresh). Callers re-read the
  grant after taking it.
- a store belongs to one deployment (:mod:`broker.tokens.stores.deployment`): opened with an
  identity, it records it at creation and refuses another with
  :class:`broker.errors.DeploymentMismatch`; a bound store refuses to ``create`` a grant of
  another issuer/client. An existing file or schema that is not a store of ours (empty,
  truncated, foreign) is refused with :class:`broker.errors.StoreUnusable`, never initialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from broker.oauth.types import TokenSet
from broker.tokens.model import Grant, GrantExpiry, GrantStatus, GrantSummary
from broker.tokens.stores.deployment import RecordedIdentity
from broker.tokens.stores.due import DueRule


class GrantStore(Protocol):
    async def create(self, grant: Grant) -> None:
        """Insert a new grant (``grant_id`` unique)."""
        ...

    async def get(self, grant_id: str) -> Grant:
        """Raise :class:`broker.errors.GrantNotFound` when absent."""
        ...

    async def list(self, *, label: str | None = None) -> list[Grant]: ...

    async def mark_refresh_started(self, grant_id: str, at: float) -> None:
        """Durably record the intent to refresh (before the request is sent)."""
        ...

    async def rotate(self, grant_id: str, tokens: TokenSet, *, expected_version: int) -> Grant:
        """Store a refresh result in one transaction: new access token and expiry, the new
        refresh token (or keep the old one when ``tokens.refresh_token`` is None), version + 1,
        intent cleared, last_error cleared. Raise :class:`broker.errors.StoreError` if the stored
        version is not ``expected_version`` (someone else rotated first)."""
        ...

    async def set_status(self, grant_id: str, status: GrantStatus, *, reason: str | None) -> Grant:
        """Change the status (and last_error); clears the intent."""
        ...

    async def record_error(self, grant_id: str, reason: str) -> None:
        """Remember the last (retryable) refresh failure without changing the status."""
        ...

    async def delete(self, grant_id: str) -> None: ...

    def refresh_lock(self, grant_id: str) -> AbstractAsyncContextManager[None]:
        """Exclusive per-grant lock for the whole refresh (cross-replica where shared)."""
        ...

    async def ping(self) -> None:
        """Raise :class:`broker.errors.StoreError` when unreachable (doctor, health)."""
        ...

    async def close(self) -> None: ...


class IdentityRecord(Protocol):
    """The deployment identities a store recorded (every implementation has it; a separate
    role so that token-core fakes need not)."""

    async def identities(self) -> Sequence[RecordedIdentity]:
        """Primary first."""
        ...


class ExpiryView(Protocol):
    """The expiry columns of the ACTIVE grants, read without opening any token (the doctor's
    outage budget; the SQL stores have it)."""

    async def expiries(self) -> Sequence[GrantExpiry]: ...


class GrantIndex(Protocol):
    """The grants' clear columns, read without opening any token (every implementation has
    it): listing (ListGrants needs no secret) and the background pass's question "which grants
    are due?". ``refresh_due_at`` is computed by the store's :class:`~broker.tokens.stores.due.
    DueRule` on ``create`` and ``rotate`` (or given to ``rotate``); it is indexed."""

    async def list_metadata(self, *, label: str | None = None) -> list[GrantSummary]:
        """Every grant (or those with ``label``), ordered by grant id."""
        ...

    async def due(
        self, now: float, *, horizon: float = 0.0, limit: int = 1000
    ) -> list[GrantSummary]:
        """ACTIVE grants with ``refresh_due_at <= now + horizon``, earliest first, at most
        ``limit``; claims are ignored (see :class:`RefreshClaims`)."""
        ...

    async def reschedule(self, rule: DueRule) -> int:
        """Compute due times with ``rule`` from now on and, if it differs from the rule in
        use, recompute them for every ACTIVE grant (clear columns only); returns how many were
        recomputed. The token core calls it once with its own schedule."""
        ...

    async def count_by_status(self, status: GrantStatus) -> int:
        """How many grants have ``status``: one COUNT on the indexed status column, no row
        read beyond the index (the gauge of grants needing re-authorization polls it)."""
        ...


class RefreshClaims(Protocol):
    """Refresh leases, so that replicas sharing a store divide the due grants instead of all
    refreshing all of them. A claim is a lease (``claimed_by``, ``claim_until``): a crashed
    claimer's lease expires and another replica claims the grant. ``rotate`` and
    ``set_status`` clear the claim; the per-grant ``refresh_lock`` still serialises refreshes
    (a claim divides work, the lock is what makes a refresh exclusive)."""

    async def claim_due(
        self, now: float, *, owner: str, lease: float, horizon: float = 0.0, limit: int = 1000
    ) -> list[GrantSummary]:
        """Atomically claim up to ``limit`` due ACTIVE grants (as :meth:`GrantIndex.due`)
        whose claim is absent or expired (``claim_until <= now``; a grant ``owner`` holds is
        not handed out again either, so a failing refresh waits for its lease); each is
        returned claimed by ``owner`` until ``now + lease``. Two concurrent callers never get
        the same grant."""
        ...

    async def release_claim(self, grant_id: str, *, owner: str) -> None:
        """Drop ``owner``'s claim on the grant (nothing if another holds it or it is gone)."""
        ...
