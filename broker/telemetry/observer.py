"""Metrics for the token core and the OAuth client: implements the token core's observer port
(:class:`broker.tokens.observer.TokenBrokerObserver`) and OAuth's error-answer port
(:class:`broker.oauth.as_errors.AsErrorObserver`) over
:class:`broker.telemetry.metrics.BrokerMetrics`.

The dependency points from tokens and oauth to nothing here: each port is defined in its
package, and these classes satisfy them structurally without importing it (telemetry sits
below every domain package). Freshness and refresh outcome arrive as the port's string enums and are
taken as plain ``str`` (a ``StrEnum`` is one), so the signatures stay compatible.
"""

from __future__ import annotations

from broker.telemetry.metrics import BrokerMetrics, as_error_label

_DEAD = "dead"
"""The value of ``RefreshOutcome.DEAD``: the grant needs re-authorization (a test pins it)."""


class MetricsObserver:
    def __init__(self, metrics: BrokerMetrics) -> None:
        self._metrics = metrics

    def token_served(self, grant_id: str, freshness: str, *, cache_hit: bool) -> None:
        if cache_hit:
            self._metrics.record_cache_hit()
        else:
            self._metrics.record_cache_miss()
        self._metrics.record_token_request("GetAccessToken", f"served_{str(freshness).lower()}")

    def refresh_finished(self, grant_id: str, outcome: str, *, duration: float) -> None:
        self._metrics.record_refresh(duration, str(outcome))
        if str(outcome) == _DEAD:
            self._metrics.record_reauthorization_required()

    def single_flight_joined(self, grant_id: str) -> None:
        self._metrics.record_token_request("GetAccessToken", "single_flight_joined")


class AsErrorMetrics:
    """Implements OAuth's error-answer port (:class:`broker.oauth.as_errors.AsErrorObserver`)
    structurally: every error answer the classifier sees becomes one ``broker.as.errors``."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self._metrics = metrics

    def as_error(self, endpoint: str, status: int, error: str | None) -> None:
        self._metrics.record_as_error(str(endpoint), as_error_label(error, status))
