"""The metrics observer implements the token core's observer port without importing tokens:
a typed assignment to the port (mypy --strict) plus the values it records."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from broker.telemetry import instruments
from broker.telemetry.metrics import BrokerMetrics
from broker.telemetry.observer import MetricsObserver
from broker.tokens.freshness import Freshness
from broker.tokens.observer import RefreshOutcome, TokenBrokerObserver


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for p in m.data.data_points
    ]


def observer() -> tuple[TokenBrokerObserver, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    metrics = BrokerMetrics(MeterProvider(metric_readers=[reader]).get_meter("broker"))
    port: TokenBrokerObserver = MetricsObserver(metrics)  # the structural check
    return port, reader


def test_served_tokens_are_counted_by_freshness_with_the_port_enum() -> None:
    port, reader = observer()
    port.token_served("g1", Freshness.STALE, cache_hit=False)
    port.token_served("g1", Freshness.FRESH, cache_hit=True)
    outcomes = {
        p.attributes["outcome"]: p.value for p in points(reader, instruments.TOKEN_REQUESTS.name)
    }
    assert outcomes == {"served_stale": 1, "served_fresh": 1}


def test_only_a_dead_refresh_counts_a_reauthorization() -> None:
    port, reader = observer()
    for outcome in RefreshOutcome:
        port.refresh_finished("g1", outcome, duration=0.01)
    reauth = points(reader, instruments.REAUTH_TRANSITIONS.name)
    assert [p.value for p in reauth] == [1]
    recorded = {p.attributes["outcome"] for p in points(reader, instruments.REFRESH_DURATION.name)}
    assert recorded == {o.value for o in RefreshOutcome}
