"""Hooks the token core calls so metrics can be wired without touching its logic.

The telemetry module implements :class:`TokenBrokerObserver` with counters and histograms; the
default :class:`NullObserver` does nothing. Hooks are synchronous, must not block and must not
raise (an exception from a hook is logged and swallowed by the core). Arguments are never secret.
"""

from __future__ import annotations

import enum
from typing import Protocol

from broker.tokens.freshness import Freshness


class RefreshOutcome(enum.StrEnum):
    REFRESHED = "refreshed"
    """New tokens fetched and stored."""
    NOT_NEEDED = "not_needed"
    """After taking the lock the stored grant was already fresh (another replica refreshed)."""
    DEAD = "dead"
    """invalid_grant (or no refresh token): the grant now needs re-authorization."""
    RETRYABLE = "retryable"
    """AS/HSM/store trouble: error recorded, cached token served while valid."""
    REJECTED = "rejected"
    """The response failed validation (id_token iss/sub...): grant unchanged."""
    FAILED = "failed"
    """Any other error."""


class TokenBrokerObserver(Protocol):
    def token_served(self, grant_id: str, freshness: Freshness, *, cache_hit: bool) -> None:
        """A token was handed to a caller."""
        ...

    def refresh_finished(self, grant_id: str, outcome: RefreshOutcome, *, duration: float) -> None:
        """One single-flight refresh ended (``duration`` in monotonic seconds)."""
        ...

    def single_flight_joined(self, grant_id: str) -> None:
        """A caller waited for a refresh another caller had already started."""
        ...


class NullObserver:
    def token_served(self, grant_id: str, freshness: Freshness, *, cache_hit: bool) -> None:
        return None

    def refresh_finished(self, grant_id: str, outcome: RefreshOutcome, *, duration: float) -> None:
        return None

    def single_flight_joined(self, grant_id: str) -> None:
        return None
