"""``[tokens]``: freshness thresholds, the background refresh schedule and how soon a status
change made through another replica is seen."""

from __future__ import annotations

from dataclasses import dataclass

from broker.config.section import Section
from broker.errors import ConfigError
from broker.tokens.schedule import DEFAULT_FRACTION, DEFAULT_RETRY_MARGIN


@dataclass(frozen=True)
class TokenSettings:
    """``[tokens]``: freshness. FRESH above ``refresh_threshold`` seconds of remaining life,
    STALE below it (served, refreshed in the background), never served below ``min_serve_ttl``."""

    refresh_threshold: float = 225.0  # google-auth REFRESH_THRESHOLD: 3 min 45 s
    min_serve_ttl: float = 30.0
    background_interval: float = 30.0
    refresh_fraction: float = DEFAULT_FRACTION
    """A background refresh is due at this fraction of the access token's life (+- 10 %
    jitter), never later than ``refresh_threshold`` before expiry."""
    refresh_retry_margin: float = DEFAULT_RETRY_MARGIN
    """Failed refreshes are retried until this many seconds before the refresh token dies."""
    status_poll_interval: float = 2.0
    """How often the store is asked which grants changed status through another replica: a
    grant revoked (or ended) elsewhere is served here at most about this long afterwards."""


def parse_tokens(section: Section) -> TokenSettings:
    threshold = section.number("refresh_threshold", 225.0, low=1.0, high=86_400.0)
    min_ttl = section.number("min_serve_ttl", 30.0, low=0.0, high=86_400.0)
    if min_ttl >= threshold:
        raise ConfigError(
            f"{section.key('min_serve_ttl')} must be below {section.key('refresh_threshold')}"
        )
    return TokenSettings(
        refresh_threshold=threshold,
        min_serve_ttl=min_ttl,
        background_interval=section.number("background_interval", 30.0, low=1.0, high=3600.0),
        refresh_fraction=section.number("refresh_fraction", DEFAULT_FRACTION, low=0.05, high=0.95),
        refresh_retry_margin=section.number(
            "refresh_retry_margin", DEFAULT_RETRY_MARGIN, low=0.0, high=86_400.0
        ),
        status_poll_interval=section.number("status_poll_interval", 2.0, low=0.1, high=60.0),
    )
