"""Every instrument the broker creates is the catalogue's (name, kind's unit); the HSM signer
decorator records sign latency and errors."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from broker.audit.sinks import MeterFailureObserver
from broker.errors import HsmUnavailable
from broker.telemetry import instruments
from broker.telemetry.metrics import BrokerMetrics
from broker.telemetry.signer import MeteredSigner
from tests.clock import FakeClock

CATALOGUE = {spec.name: spec.unit for spec in instruments.ALL}


def exported(reader: InMemoryMetricReader) -> dict[str, tuple[str, list[Any]]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        m.name: (m.unit or "", list(m.data.data_points))
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }


def test_broker_metrics_and_audit_failures_are_named_and_unitised_by_the_catalogue() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    m = BrokerMetrics(provider.get_meter("broker"))
    m.record_token_request("GetAccessToken", "ok")
    m.record_cache_hit()
    m.record_cache_miss()
    m.record_refresh(0.1, "refreshed")
    m.record_served_token(10.0)
    m.record_sign(0.001, "CKM_ECDSA")
    m.record_sign_error("hsm_unavailable")
    m.record_as_error("token", "invalid_grant")
    m.observe_pending_logins(lambda: 1)
    m.record_reauthorization_required()
    m.observe_reauthorization_required(lambda: 2)
    MeterFailureObserver(provider).audit_failed("file", "grant.revoked")
    got = {name: unit for name, (unit, _) in exported(reader).items()}
    assert len(got) == 12
    assert got == {name: CATALOGUE[name] for name in got}
    provider.shutdown()


class _Signer:
    kid = "did:key:zTest#zTest"
    alg = "ES256"
    mechanism = "CKM_ECDSA"

    def __init__(self, clock: FakeClock, fail: bool = False) -> None:
        self.clock = clock
        self.fail = fail

    def sign(self, message: bytes) -> bytes:
        self.clock.advance(0.004)  # the device takes 4 ms
        if self.fail:
            raise HsmUnavailable("session lost")
        return b"\x01" * 64


def test_metered_signer_records_duration_and_error_reason() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = BrokerMetrics(provider.get_meter("broker"))
    clock = FakeClock()
    ok = MeteredSigner(_Signer(clock), metrics, clock)
    assert ok.sign(b"m") == b"\x01" * 64
    assert (ok.kid, ok.alg, ok.mechanism) == (_Signer.kid, "ES256", "CKM_ECDSA")
    with pytest.raises(HsmUnavailable):
        MeteredSigner(_Signer(clock, fail=True), metrics, clock).sign(b"m")
    points = exported(reader)
    unit, (duration,) = points["broker.hsm.sign.duration"]
    assert (unit, duration.count, dict(duration.attributes)) == ("s", 1, {"mechanism": "CKM_ECDSA"})
    assert abs(duration.sum - 0.004) < 1e-9
    _, (errors,) = points["broker.hsm.sign.errors"]
    assert (errors.value, dict(errors.attributes)) == (1, {"reason": "hsm_unavailable"})
    provider.shutdown()
