"""``broker.credential.expiry`` read through a real OpenTelemetry meter provider."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from broker.credentials.expiry import credential_gauge
from broker.credentials.lear import parse_credential
from broker.credentials.store import save_credential
from broker.keys.didkey import did_from_public_key
from tests.clock import FakeClock
from tests.credentials.issuer import TestIssuer

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def gauge_values(reader: InMemoryMetricReader) -> list[float]:
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [
        float(point.value)  # type: ignore[union-attr]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "broker.credential.expiry"
        for point in metric.data.data_points
    ]


def test_gauge_reports_seconds_left_and_follows_a_replaced_file(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    path = tmp_path / "lear-credential-machine.jwt"
    clock = FakeClock(NOW.timestamp())
    credential_gauge(provider, path, clock)
    assert gauge_values(reader) == []  # nothing stored: nothing reported

    did = did_from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    issuer = TestIssuer.self_signed()
    jwt = issuer.issue(did, now=NOW, valid_for=timedelta(days=10))
    save_credential(path, parse_credential(jwt))
    assert gauge_values(reader) == [10 * 86400.0]
    clock.advance(3600)
    assert gauge_values(reader) == [10 * 86400.0 - 3600]

    longer = issuer.issue(did, now=NOW, valid_for=timedelta(days=100))
    save_credential(path, parse_credential(longer))
    assert gauge_values(reader) == [100 * 86400.0 - 3600]
    provider.shutdown()
