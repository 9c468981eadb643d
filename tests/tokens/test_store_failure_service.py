"""Service wiring of G04/C09: DEGRADED log lines and the two gauges."""

from __future__ import annotations

import logging
from email.utils import formatdate

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from broker.app.health import PersistenceHealthLog, resilience_gauges
from broker.oauth.skew import SkewMonitor
from broker.tokens.broker import TokenBroker
from broker.tokens.stores.memory import MemoryGrantStore
from tests.clock import FakeClock
from tests.tokens.fakes import FakeRefresher


def test_g04_degraded_and_recovered_are_logged_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = PersistenceHealthLog()
    with caplog.at_level(logging.INFO, logger="broker.service"):
        health.unpersisted_changed(frozenset({"g1"}))
        health.unpersisted_changed(frozenset({"g1", "g2"}))
        health.unpersisted_changed(frozenset())
    levels = [r.levelno for r in caplog.records if r.name == "broker.service"]
    assert levels == [logging.ERROR, logging.WARNING]
    assert not health.degraded


def test_c09_g04_gauges_report_skew_and_unpersisted_grants() -> None:
    clock = FakeClock()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    skew = SkewMonitor(clock, alarm_threshold=60.0)
    broker = TokenBroker(MemoryGrantStore(clock), FakeRefresher(clock), clock)
    resilience_gauges(provider, skew, broker)
    skew.observe(formatdate(clock.now() - 90, usegmt=True))
    data = reader.get_metrics_data()
    assert data is not None
    values = {
        (metric.name, metric.unit): [p.value for p in metric.data.data_points]  # type: ignore[union-attr]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert values == {
        ("broker.as.clock_skew", "s"): [-90.0],
        ("broker.tokens.unpersisted_grants", "{grant}"): [0],
        ("broker.grants.last_retry_window", "{grant}"): [0],  # no grant: no outage budget
    }
    provider.shutdown()
