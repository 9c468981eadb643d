"""Metrics for the token core: a :class:`broker.tokens.observer.TokenBrokerObserver` over
:class:`broker.telemetry.metrics.BrokerMetrics`."""

from __future__ import annotations

from broker.telemetry.metrics import BrokerMetrics
from broker.tokens.freshness import Freshness
from broker.tokens.observer import RefreshOutcome


class MetricsObserver:
    def __init__(self, metrics: BrokerMetrics) -> None:
        self._metrics = metrics

    def token_served(self, grant_id: str, freshness: Freshness, *, cache_hit: bool) -> None:
        if cache_hit:
            self._metrics.record_cache_hit()
        else:
            self._metrics.record_cache_miss()
        self._metrics.record_token_request("GetAccessToken", f"served_{freshness.value.lower()}")

    def refresh_finished(self, grant_id: str, outcome: RefreshOutcome, *, duration: float) -> None:
        self._metrics.record_refresh(duration, outcome.value)
        if outcome is RefreshOutcome.DEAD:
            self._metrics.record_reauthorization_required()

    def single_flight_joined(self, grant_id: str) -> None:
        self._metrics.record_token_request("GetAccessToken", "single_flight_joined")
