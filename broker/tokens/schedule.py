"""When a grant's refresh is due, how long failed refreshes go on, and the outage budget.

Shape from Kubernetes' projected service-account tokens (the kubelet rotates at 80 % of the
token's life) and google-auth's ``REFRESH_THRESHOLD``: a refresh is due at ``fraction`` of the
access token's life, jittered by ``+- jitter`` of that stretch, and never later than the fixed
threshold before expiry (with its own per-token jitter, as before). The jitter is derived from
the grant id and version, so it is the same after a restart and on every replica, and a test
can predict it.

The refresh token's expiry (known from ``refresh_expires_in`` or ``[oauth]
refresh_token_lifetime``) bounds the retries: a failed refresh is retried, with the usual
back-off, until ``margin`` seconds before the refresh token dies (the back-off never skips that
moment). The *outage budget* is the time from now until the earliest refresh-token expiry
among active grants: how long the authorization server may stay down before some grant dies.

All times here are on one time base (epoch seconds or monotonic seconds, as the caller likes).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from broker.errors import InvalidArgument
from broker.tokens.model import GrantExpiry

DEFAULT_FRACTION = 0.5
DEFAULT_RETRY_MARGIN = 120.0


class LifetimeKind(enum.StrEnum):
    ACCESS = "access"
    """The refresh token lives as long as the access token issued with it (DOME v2)."""
    SECONDS = "seconds"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RefreshTokenLifetime:
    """``[oauth] refresh_token_lifetime``: used when the AS sends no ``refresh_expires_in``."""

    kind: LifetimeKind = LifetimeKind.ACCESS
    seconds: float | None = None

    def __post_init__(self) -> None:
        if (self.kind is LifetimeKind.SECONDS) != (self.seconds is not None):
            raise InvalidArgument("a refresh-token lifetime in seconds needs its seconds")
        if self.seconds is not None and not self.seconds > 0:
            raise InvalidArgument("a refresh-token lifetime must be positive")

    @classmethod
    def of(cls, value: str | float) -> RefreshTokenLifetime:
        if isinstance(value, str):
            kind = LifetimeKind(value)
            if kind is LifetimeKind.SECONDS:
                raise InvalidArgument("give the refresh-token lifetime as a number of seconds")
            return cls(kind)
        return cls(LifetimeKind.SECONDS, float(value))

    def expiry(self, *, issued_at: float, access_expires_at: float) -> float | None:
        """When a refresh token issued at ``issued_at`` with an access token expiring at
        ``access_expires_at`` dies, or None when unknown."""
        if self.kind is LifetimeKind.ACCESS:
            return access_expires_at
        if self.kind is LifetimeKind.SECONDS:
            assert self.seconds is not None
            return issued_at + self.seconds
        return None

    def describe(self) -> str:
        if self.kind is LifetimeKind.SECONDS:
            return f"{self.seconds:g} s"
        return self.kind.value


def jitter_unit(grant_id: str, version: int) -> float:
    """A number in [0, 1) fixed by the grant id and version (not secret, not random)."""
    digest = hashlib.sha256(f"{grant_id}\x00{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class RefreshSchedule:
    """``fraction`` None: the threshold alone decides (the schedule before lifetimes counted)."""

    threshold: float
    jitter: float = 0.1
    fraction: float | None = DEFAULT_FRACTION
    retry_margin: float = DEFAULT_RETRY_MARGIN

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise InvalidArgument("refresh_threshold must be positive")
        if not 0 <= self.jitter < 1:
            raise InvalidArgument("jitter must be in [0, 1)")
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise InvalidArgument("refresh_fraction must be in (0, 1)")
        if not self.retry_margin >= 0:
            raise InvalidArgument("refresh_retry_margin must not be negative")

    def threshold_due(self, grant_id: str, version: int, *, expires_at: float) -> float:
        """The latest a refresh is due: ``threshold`` (minus up to ``jitter`` of it) before
        expiry, so grants expiring together spread over several background passes."""
        lead = self.threshold * (1 - self.jitter * jitter_unit(grant_id, version))
        return expires_at - lead

    def due_at(
        self, grant_id: str, version: int, *, issued_at: float | None, expires_at: float
    ) -> float:
        """When the refresh of this access token is due: at ``fraction`` of its life
        ``+- jitter`` of that stretch, never later than :meth:`threshold_due`. Without the
        issue time (or a fraction) the threshold alone decides."""
        latest = self.threshold_due(grant_id, version, expires_at=expires_at)
        if self.fraction is None or issued_at is None or expires_at <= issued_at:
            return latest
        window = self.fraction * (expires_at - issued_at)
        spread = self.jitter * window * (2 * jitter_unit(grant_id, -version) - 1)
        return min(issued_at + window + spread, latest)

    def retry_deadline(self, refresh_expires_at: float | None) -> float | None:
        """Failed refreshes are retried at least until this moment (None: unknown)."""
        if refresh_expires_at is None:
            return None
        return refresh_expires_at - self.retry_margin

    def next_attempt(self, now: float, delay: float, deadline: float | None) -> float:
        """When to try again after a failure with back-off ``delay``: never beyond the retry
        deadline while it is still ahead (the last chance is not skipped)."""
        planned = now + delay
        if deadline is not None and now < deadline < planned:
            return deadline
        return planned

    def in_last_window(self, now: float, deadline: float | None) -> bool:
        """Within the last ``threshold`` seconds before the retry deadline (the stretch the
        threshold-only schedule had for all its retries), or past it."""
        return deadline is not None and now >= deadline - self.threshold


def outage_budget(refresh_expiries: Iterable[float | None], now: float) -> float | None:
    """Seconds from ``now`` until the earliest known refresh-token expiry (negative when one
    is already past); None when no expiry is known."""
    known = [t for t in refresh_expiries if t is not None]
    if not known:
        return None
    return min(known) - now


def refresh_expiry(grant: GrantExpiry, lifetime: RefreshTokenLifetime) -> float | None:
    """A grant's refresh-token expiry: as stored, else derived from ``lifetime``."""
    if grant.refresh_expires_at is not None:
        return grant.refresh_expires_at
    if lifetime.kind is LifetimeKind.ACCESS:
        return grant.access_expires_at
    if grant.access_issued_at is None:
        return None
    return lifetime.expiry(
        issued_at=grant.access_issued_at, access_expires_at=grant.access_expires_at
    )


def describe_budget(
    grants: Iterable[GrantExpiry], lifetime: RefreshTokenLifetime, now: float
) -> str:
    """One line for ``broker doctor``: the outage budget read from the store."""
    listed = list(grants)
    budget = outage_budget((refresh_expiry(g, lifetime) for g in listed), now)
    if budget is None:
        return (
            f"outage budget unknown ({len(listed)} active grants, none with a known "
            f"refresh-token expiry; refresh_token_lifetime = {lifetime.describe()})"
        )
    return (
        f"outage budget {budget:.0f} s (earliest refresh-token expiry among {len(listed)} "
        f"active grants; refresh_token_lifetime = {lifetime.describe()})"
    )
