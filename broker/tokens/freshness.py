"""Three-state access-token freshness with one named threshold.

Shape from google-auth (``TokenState`` and ``REFRESH_THRESHOLD``): a token is refreshed *ahead*
of its expiry. FRESH tokens are served from the cache; STALE tokens are still served but a
background refresh starts; INVALID tokens (expired, or too close to expiry to be useful) need a
blocking refresh before anything is served.
"""

from __future__ import annotations

import enum

REFRESH_THRESHOLD = 300.0
"""Seconds before expiry at which a token stops being FRESH (refresh ahead of expiry)."""

MIN_SERVE_TTL = 10.0
"""A token with this many seconds left or fewer is never handed out."""


class Freshness(enum.StrEnum):
    FRESH = "fresh"
    STALE = "stale"
    INVALID = "invalid"


def freshness(
    expires_at: float,
    now: float,
    *,
    threshold: float = REFRESH_THRESHOLD,
    min_ttl: float = MIN_SERVE_TTL,
) -> Freshness:
    """Classify a token expiring at ``expires_at`` as seen at ``now`` (same time base).

    remaining = expires_at - now
    - remaining <= min_ttl            -> INVALID (never served)
    - min_ttl < remaining <= threshold -> STALE (served, refresh in the background)
    - remaining > threshold            -> FRESH
    When ``min_ttl`` >= ``threshold`` there is no STALE band: a token is FRESH or INVALID.
    """
    remaining = expires_at - now
    if remaining <= min_ttl:
        return Freshness.INVALID
    if remaining <= threshold:
        return Freshness.STALE
    return Freshness.FRESH
