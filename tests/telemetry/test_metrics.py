"""BrokerMetrics: every instrument, its name, labels and values (in-memory reader)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from broker.telemetry import BrokerMetrics
from broker.telemetry.metrics import as_error_label

RT = "Xk3nq0aZ9PqL2mvB7tYw4sR8uE1oN6cH5jG0fD2kA9s"


def collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = list(m.data.data_points)
    return out


def make() -> tuple[BrokerMetrics, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    return BrokerMetrics(provider.get_meter("broker")), reader


def test_every_instrument_records_with_its_labels() -> None:
    m, reader = make()
    m.record_token_request("GetAccessToken", "ok")
    m.record_token_request("GetAccessToken", "ok")
    m.record_token_request("GetAccessToken", "denied")
    m.record_cache_hit()
    m.record_cache_hit()
    m.record_cache_miss()
    m.record_refresh(0.120, "ok")
    m.record_served_token(3000.0)
    m.record_served_token(-5.0)  # clamped: never a negative bucket
    m.record_sign(0.0015, "CKM_ECDSA")
    m.record_sign_error("hsm_unavailable")
    m.record_as_error("token", "invalid_grant")
    m.observe_pending_logins(lambda: 1)
    m.record_reauthorization_required()
    points = collect(reader)

    requests = {
        (p.attributes["method"], p.attributes["outcome"]): p.value
        for p in points["broker.token.requests"]
    }
    assert requests == {("GetAccessToken", "ok"): 2, ("GetAccessToken", "denied"): 1}
    assert points["broker.token.cache.hits"][0].value == 2
    assert points["broker.token.cache.misses"][0].value == 1
    (refresh,) = points["broker.token.refresh.duration"]
    assert refresh.count == 1 and refresh.attributes == {"outcome": "ok"}
    assert abs(refresh.sum - 0.120) < 1e-9
    (served,) = points["broker.token.served.time_to_expiry"]
    assert served.count == 2 and served.min == 0.0 and served.max == 3000.0
    (sign,) = points["broker.hsm.sign.duration"]
    assert sign.attributes == {"mechanism": "CKM_ECDSA"} and sign.count == 1
    assert points["broker.hsm.sign.errors"][0].attributes == {"reason": "hsm_unavailable"}
    assert points["broker.as.errors"][0].attributes == {
        "endpoint": "token",
        "error": "invalid_grant",
    }
    assert points["broker.logins.pending"][0].value == 1
    assert points["broker.grants.reauthorization_required.transitions"][0].value == 1


def test_secret_or_long_labels_are_neutralised() -> None:
    m, reader = make()
    m.record_as_error("token", RT)
    m.record_token_request("x" * 500, "ok")
    points = collect(reader)
    assert points["broker.as.errors"][0].attributes["error"] == "other"
    (req,) = points["broker.token.requests"]
    assert len(str(req.attributes["method"])) == 64


def test_reauthorization_gauge_polls_its_source_and_can_be_replaced() -> None:
    m, reader = make()
    m.observe_reauthorization_required(lambda: 3)
    assert collect(reader)["broker.grants.reauthorization_required"][0].value == 3
    m.observe_reauthorization_required(lambda: 5)
    assert collect(reader)["broker.grants.reauthorization_required"][0].value == 5


def test_store_gauges_report_nothing_while_their_source_has_no_answer() -> None:
    m, reader = make()
    answers: list[int | None] = [None, 2]
    m.observe_pending_logins(lambda: answers[0])
    m.observe_reauthorization_required(lambda: answers[1])
    points = collect(reader)
    assert "broker.logins.pending" not in points
    assert points["broker.grants.reauthorization_required"][0].value == 2
    answers[:] = [4, None]
    points = collect(reader)
    assert points["broker.logins.pending"][0].value == 4
    assert "broker.grants.reauthorization_required" not in points


def test_as_error_labels_are_bounded_to_the_oauth_codes_and_known_endpoints() -> None:
    m, reader = make()
    m.record_as_error("token", "invalid_grant")
    m.record_as_error("token", "http_403")
    m.record_as_error("token", "custom_code_of_some_server")
    m.record_as_error("https://as.example/token", "invalid_client")
    m.record_as_error("par", "http_999")
    m.record_as_error("metadata", "http_503")
    m.record_as_error("jwks", "http_500")
    m.record_as_error("discovery", "http_500")
    got = {
        (p.attributes["endpoint"], p.attributes["error"]): p.value
        for p in collect(reader)["broker.as.errors"]
    }
    assert got == {
        ("token", "invalid_grant"): 1,
        ("token", "http_403"): 1,
        ("token", "other"): 1,
        ("other", "invalid_client"): 1,
        ("par", "other"): 1,
        ("metadata", "http_503"): 1,
        ("jwks", "http_500"): 1,
        ("other", "http_500"): 1,
    }
    assert as_error_label(None, 403) == "http_403"
    assert as_error_label(None, 418) == "http_other"
    assert as_error_label("invalid_grant", 400) == "invalid_grant"
    assert as_error_label("made_up", 400) == "other"
