"""broker.as.errors through the real OAuth client: every error answer of the token and PAR
endpoints that the one classifier (broker.oauth.as_errors) reads is counted by endpoint and
OAuth error code, through the client's AS-error port and the telemetry adapter the composition
root connects (broker.telemetry.observer.AsErrorMetrics). Before, nothing recorded it.

Discovery and JWKS error answers are counted too (endpoint ``metadata`` / ``jwks``, error
``http_<status>``); a transport failure or a refused document is not (no error answer)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from broker.errors import (
    AuthServerUnavailable,
    DiscoveryError,
    InvalidGrant,
    MachineGrantRejected,
    OAuthErrorResponse,
)
from broker.keys.soft import SoftSigner
from broker.oauth.client import ClientReporting, OAuthClient
from broker.oauth.config import ClientConfig
from broker.telemetry.metrics import BrokerMetrics
from broker.telemetry.observer import AsErrorMetrics
from tests.clock import FakeClock
from tests.oauth.fakeas import FakeAS, metadata_doc

REQUEST_OBJECT = "eyJhbGciOiJFUzI1NiJ9.eyJhIjoxfQ.c2ln"
AS_ERRORS = "broker.as.errors"


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> Iterator[BrokerMetrics]:
    provider = MeterProvider(metric_readers=[reader])
    yield BrokerMetrics(provider.get_meter("broker"))
    provider.shutdown()


@pytest.fixture
def metered(
    http: httpx.AsyncClient,
    signer: SoftSigner,
    config: ClientConfig,
    clock: FakeClock,
    metrics: BrokerMetrics,
) -> OAuthClient:

    async def no_sleep(_delay: float) -> None:
        return None

    return OAuthClient(
        config,
        http,
        signer,
        clock,
        sleep=no_sleep,
        jitter=lambda: 0.0,
        reporting=ClientReporting(as_errors=AsErrorMetrics(metrics)),
    )


def as_errors(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    data = reader.get_metrics_data()
    out: dict[tuple[str, str], int] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == AS_ERRORS:
                    for p in m.data.data_points:
                        assert isinstance(p, NumberDataPoint)
                        attrs = dict(p.attributes or {})
                        out[(str(attrs["endpoint"]), str(attrs["error"]))] = int(p.value)
    return out


async def test_a_token_endpoint_invalid_grant_is_counted_by_endpoint_and_code(
    fake_as: FakeAS, metered: OAuthClient, reader: InMemoryMetricReader
) -> None:
    fake_as.token = lambda _r: httpx.Response(400, json={"error": "invalid_grant"})
    with pytest.raises(InvalidGrant):
        await metered.refresh("rt-old", subject="did:key:zDnaeUser")
    assert as_errors(reader) == {("token", "invalid_grant"): 1}


async def test_every_retried_answer_counts_and_a_code_the_specs_do_not_define_is_other(
    fake_as: FakeAS, metered: OAuthClient, reader: InMemoryMetricReader
) -> None:
    fake_as.token = lambda _r: httpx.Response(503)
    with pytest.raises(AuthServerUnavailable):
        await metered.refresh("rt-old", subject="did:key:zDnaeUser")  # 3 attempts
    fake_as.token = lambda _r: httpx.Response(400, json={"error": "x" * 200})
    with pytest.raises(OAuthErrorResponse):
        await metered.exchange_code("code-1", code_verifier=None, nonce="n" * 32)
    # A 200 carrying an OAuth error is read as a 400 with that code.
    fake_as.token = lambda _r: httpx.Response(200, json={"error": "invalid_scope"})
    with pytest.raises(OAuthErrorResponse):
        await metered.refresh("rt-old", subject="did:key:zDnaeUser")
    assert as_errors(reader) == {
        ("token", "http_503"): 3,
        ("token", "other"): 1,
        ("token", "invalid_scope"): 1,
    }


async def test_client_credentials_and_par_errors_are_counted(
    fake_as: FakeAS, metered: OAuthClient, reader: InMemoryMetricReader
) -> None:
    fake_as.token = lambda _r: httpx.Response(403)  # DOME's empty 403 to a machine
    with pytest.raises(MachineGrantRejected):
        await metered.client_credentials("machine")
    fake_as.par = lambda _r: httpx.Response(400, json={"error": "invalid_request_object"})
    with pytest.raises(OAuthErrorResponse):
        await metered.push_authorization_request(REQUEST_OBJECT)
    assert as_errors(reader) == {
        ("token", "http_403"): 1,
        ("par", "invalid_request_object"): 1,
    }


async def test_discovery_and_jwks_error_answers_are_counted_as_metadata_and_jwks(
    fake_as: FakeAS,
    metered: OAuthClient,
    reader: InMemoryMetricReader,
    config: ClientConfig,
    clock: FakeClock,
) -> None:
    fake_as.discovery = lambda _r: httpx.Response(503)
    with pytest.raises(DiscoveryError):
        await metered.refresh("rt-old", subject="did:key:zDnaeUser")
    assert as_errors(reader) == {("metadata", "http_503"): 1}
    fake_as.discovery = None
    fake_as.jwks = lambda _r: httpx.Response(502, json={"error": "server_error"})
    fake_as.token = lambda _r: httpx.Response(
        200,
        json={
            "access_token": "at-new",
            "token_type": "Bearer",
            "expires_in": 3600,
            "id_token": fake_as.id_token(config.client_id, now=clock.now(), nonce="n" * 32),
        },
    )
    with pytest.raises(DiscoveryError) as info:
        await metered.exchange_code("code-1", code_verifier=None, nonce="n" * 32)
    assert info.value.reason == "jwks_http"
    assert as_errors(reader) == {("metadata", "http_503"): 1, ("jwks", "http_502"): 1}


async def test_no_answer_or_a_refused_discovery_document_is_not_an_as_error_answer(
    fake_as: FakeAS, metered: OAuthClient, reader: InMemoryMetricReader
) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fake_as.discovery = refused
    with pytest.raises(AuthServerUnavailable):
        await metered.metadata()
    fake_as.discovery = lambda _r: httpx.Response(
        200, json=metadata_doc(issuer="https://elsewhere.example.org")
    )
    with pytest.raises(DiscoveryError) as info:
        await metered.metadata()
    assert info.value.reason == "issuer_mismatch"
    assert as_errors(reader) == {}
    fake_as.discovery = lambda _r: httpx.Response(404)
    with pytest.raises(DiscoveryError):
        await metered.metadata()
    assert as_errors(reader) == {("metadata", "http_404"): 1}
