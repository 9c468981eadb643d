"""The gRPC server span and ``rpc.server.duration`` follow the OpenTelemetry RPC semantic
conventions (what ``opentelemetry-instrumentation-grpc`` emits), over a real mTLS server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.trace import SpanKind, StatusCode

from broker import errors as e
from broker.server.gen.broker.v1 import broker_pb2 as pb
from broker.server.tracing import peer_attributes, server_address_of
from tests.server.conftest import APP, Harness, eventually, started_harness
from tests.server.rpc import code_of

METHOD = "broker.v1.TokenBroker/GetAccessToken"


@dataclass
class Traced:
    harness: Harness
    reader: InMemoryMetricReader

    def durations(self) -> list[tuple[str, dict[str, Any], int]]:
        """(unit, attributes, count) of every rpc.server.duration point."""
        data = self.reader.get_metrics_data()
        assert data is not None
        out: list[tuple[str, dict[str, Any], int]] = []
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points if m.name == "rpc.server.duration" else ():
                        assert isinstance(p, HistogramDataPoint)
                        out.append((m.unit or "", dict(p.attributes or {}), p.count))
        return out


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    async with started_harness(tmp_path, meter_provider=meters) as h:
        yield Traced(h, reader)
    meters.shutdown()


async def test_server_span_carries_the_rpc_semconv_attributes(traced: Traced) -> None:
    h = traced.harness
    assert await code_of(
        h.stub_for(APP).GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
    ) is (grpc.StatusCode.OK)
    (span,) = await h.finished_spans(1)
    assert span.name == METHOD
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes or {})
    peer_port = attrs.pop("network.peer.port")
    assert isinstance(peer_port, int) and 0 < peer_port < 65536
    assert attrs == {
        "rpc.system": "grpc",
        "rpc.service": "broker.v1.TokenBroker",
        "rpc.method": "GetAccessToken",
        "rpc.grpc.status_code": 0,
        "server.address": "127.0.0.1",
        "server.port": h.port,
        "network.peer.address": "127.0.0.1",
    }


async def test_rpc_server_duration_in_ms_with_the_span_attributes_but_not_the_peer(
    traced: Traced,
) -> None:
    h = traced.harness
    stub = h.stub_for(APP)
    await code_of(stub.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
    await code_of(stub.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
    h.broker.error = e.HsmUnavailable("gone")
    assert await code_of(stub.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))) is (
        grpc.StatusCode.UNAVAILABLE
    )
    base = {
        "rpc.system": "grpc",
        "rpc.service": "broker.v1.TokenBroker",
        "rpc.method": "GetAccessToken",
        "server.address": "127.0.0.1",
        "server.port": h.port,
    }
    await eventually(lambda: [n for _, _, c in traced.durations() for n in range(c)], 3)
    points = sorted(traced.durations(), key=lambda p: int(p[1]["rpc.grpc.status_code"]))
    assert points == [
        ("ms", {**base, "rpc.grpc.status_code": 0}, 2),
        ("ms", {**base, "rpc.grpc.status_code": 14}, 1),
    ]


async def test_client_errors_are_not_server_span_errors_but_server_errors_are(
    traced: Traced,
) -> None:
    h = traced.harness
    stub = h.stub_for(APP)
    denied = await code_of(stub.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-2")))
    h.broker.error = e.HsmUnavailable("gone")
    unavailable = await code_of(stub.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
    assert (denied, unavailable) == (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE)
    by_code = {
        (sp.attributes or {})["rpc.grpc.status_code"]: sp.status.status_code
        for sp in await h.finished_spans(2)
    }
    assert by_code == {7: StatusCode.UNSET, 14: StatusCode.ERROR}


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:10.1.2.3:50000", {"network.peer.address": "10.1.2.3", "network.peer.port": 50000}),
        ("ipv6:[::1]:443", {"network.peer.address": "::1", "network.peer.port": 443}),
        ("unix:/run/broker.sock", {"network.peer.address": "/run/broker.sock"}),
        ("", {}),
        ("weird", {}),
    ],
)
def test_peer_attributes_from_the_grpc_peer_string(peer: str, expected: dict[str, Any]) -> None:
    assert peer_attributes(peer) == expected


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1:0", {"server.address": "127.0.0.1", "server.port": 5000}),
        ("broker.internal:8443", {"server.address": "broker.internal", "server.port": 5000}),
        ("0.0.0.0:8443", {"server.port": 5000}),
        ("[::]:8443", {"server.port": 5000}),
        ("[::1]:8443", {"server.address": "::1", "server.port": 5000}),
    ],
)
def test_server_address_leaves_out_wildcards(bind: str, expected: dict[str, Any]) -> None:
    assert server_address_of(bind, 5000) == expected
