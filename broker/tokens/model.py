"""The grant: what the broker holds for one user authorization."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.tokens.freshness import Freshness


class GrantKind(enum.StrEnum):
    """How a grant gets its next access token: ``user`` grants refresh with their refresh token
    (RFC 6749 section 6); ``machine`` grants have none and re-acquire with a new client
    credentials request (section 4.4; DOME machine-to-machine)."""

    USER = "user"
    MACHINE = "machine"


class GrantStatus(enum.StrEnum):
    ACTIVE = "active"
    REAUTHORIZATION_REQUIRED = "reauthorization_required"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Grant:
    """One authorization held by the broker. Tokens are secret: never in ``repr``.

    ``version`` increases by one on every stored rotation (optimistic concurrency).
    ``refresh_started_at`` is the intent record: set (durably) right before a refresh request is
    sent, cleared in the same transaction that stores its result.
    ``access_issued_at``: when the access token was received (None for grants stored before the
    broker kept it); ``refresh_expires_at``: when the refresh token dies, None when unknown
    (see :mod:`broker.tokens.schedule`). Both are epoch seconds.
    ``kind``: see :class:`GrantKind` (a machine grant's ``subject`` is our client_id).
    """

    grant_id: str
    label: str
    issuer: str
    client_id: str
    subject: str
    scope: str
    status: GrantStatus
    access_token: str = field(repr=False)
    access_expires_at: float
    refresh_token: str | None = field(repr=False)
    created_at: float
    updated_at: float
    version: int = 1
    refresh_started_at: float | None = None
    last_error: str | None = None
    id_claims: Mapping[str, Any] = field(default_factory=dict, repr=False)
    access_issued_at: float | None = None
    refresh_expires_at: float | None = None
    kind: GrantKind = GrantKind.USER


@dataclass(frozen=True, slots=True)
class AccessToken:
    """What the token core hands to a caller: one access token of one grant.

    ``expires_at`` is absolute (epoch seconds); ``freshness`` is the state it was served in
    (FRESH, or STALE while a background refresh runs).
    """

    grant_id: str
    access_token: str = field(repr=False)
    token_type: str
    expires_at: float
    scope: str
    subject: str
    freshness: Freshness


@dataclass(frozen=True)
class GrantExpiry:
    """The clear (never sealed) expiry columns of one active grant: enough for the outage
    budget without opening any token."""

    grant_id: str
    access_expires_at: float
    access_issued_at: float | None
    refresh_expires_at: float | None


@dataclass(frozen=True)
class GrantSummary:
    """A grant's clear (never sealed) columns: what listing and scheduling need, read without
    opening any token. ``refresh_due_at`` is when its next refresh is due (epoch seconds);
    ``claimed_by``/``claim_until``: the replica that holds the refresh lease and until when
    (None when unclaimed)."""

    grant_id: str
    label: str
    issuer: str
    client_id: str
    subject: str
    scope: str
    status: GrantStatus
    kind: GrantKind
    version: int
    access_expires_at: float
    access_issued_at: float | None
    refresh_expires_at: float | None
    refresh_started_at: float | None
    refresh_due_at: float
    created_at: float
    updated_at: float
    last_error: str | None
    claimed_by: str | None = None
    claim_until: float | None = None
