"""A real grpc.aio server on port 0 over mutual TLS, with a PKI generated per test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.server.app import RunningServer, start_server
from broker.server.gen.broker.v1 import broker_pb2_grpc
from broker.server.policy import PolicyHolder
from broker.server.ports import LoginService
from tests.server.fakes import FakeBroker, FakeLogins, make_grant
from tests.server.pki import Ca, Issued
from tests.server.rpc import mtls_channel

T = TypeVar("T")

HANG_GUARD_S = 20.0  # a bound against hanging, never a timing expectation


async def eventually(read: Callable[[], Sequence[T]], count: int) -> tuple[T, ...]:
    """``read()`` once it holds ``count`` items (more fails at once: the test miscounted)."""
    deadline = asyncio.get_running_loop().time() + HANG_GUARD_S
    while len(got := tuple(read())) < count:
        assert asyncio.get_running_loop().time() < deadline, (
            f"{len(got)} of {count} after {HANG_GUARD_S} s"
        )
        await asyncio.sleep(0.01)
    assert len(got) == count, f"{len(got)} where {count} were expected"
    return got


APP = "spiffe://corp.example/app"
ADMIN = "spiffe://corp.example/admin"
LABELLER = "spiffe://corp.example/labeller"

POLICY = f"""
[deny]
identities = ["spiffe://corp.example/retired"]

[identities."{APP}"]
methods = ["GetAccessToken", "WatchAccessToken", "GetGrant"]
grants = ["g-1"]

[identities."{ADMIN}"]
methods = ["*"]
grants = ["*"]

[identities."{LABELLER}"]
methods = ["GetAccessToken", "ListGrants", "StartAuthorization", "GetGrant"]
labels = ["crm"]

[identities."cn:cn-only-client"]
methods = ["GetAccessToken"]
grants = ["g-1"]
"""


def stub(channel: Any) -> Any:
    return broker_pb2_grpc.TokenBrokerStub(channel)  # type: ignore[no-untyped-call]


@dataclass
class Harness:
    ca: Ca
    server_ca: Ca
    running: RunningServer
    broker: FakeBroker
    logins: FakeLogins
    policy_path: Path
    exporter: InMemorySpanExporter
    channels: list[Any] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.running.port

    def channel(self, client: Issued | None, *, server_ca_pem: bytes | None = None) -> Any:
        ch = mtls_channel(self.port, client, server_ca_pem or self.server_ca.pem)
        self.channels.append(ch)
        return ch

    def stub_for(self, identity: str | None = None, *, cn: str | None = None) -> Any:
        client = self.ca.issue(cn=cn, uris=(identity,) if identity else ())
        return stub(self.channel(client))

    async def finished_spans(self, count: int) -> tuple[ReadableSpan, ...]:
        """The finished spans once there are ``count`` of them: a client can see a call's status
        before the server's span for it has ended, so a test polls (generously) instead."""
        return await eventually(self.exporter.get_finished_spans, count)


async def make_harness(
    tmp_path: Path,
    *,
    policy_text: str = POLICY,
    login_service: LoginService | None = None,
    server_names: tuple[str, ...] = ("broker.test",),
    bind: str = "127.0.0.1:0",
    **kwargs: Any,
) -> tuple[Harness, TracerProvider]:
    """The server over the fakes; ``login_service`` replaces the fake login service in the
    server (``Harness.logins`` is then not wired); ``server_names`` are the DNS names of the
    server certificate (the first is also its CN)."""
    ca = Ca("client-ca")
    server_ca = Ca("server-ca")
    server_cert = server_ca.issue(cn=server_names[0], dns=server_names, server=True)
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(policy_text)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = FakeBroker(make_grant("g-1", "crm"), make_grant("g-2", "erp"))
    logins = FakeLogins()
    running = await start_server(
        broker=broker,
        logins=login_service if login_service is not None else logins,
        policy=PolicyHolder(policy_path, poll_interval=kwargs.pop("poll_interval", 0.05)),
        bind=bind,
        server_cert_pem=server_cert.cert_pem,
        server_key_pem=server_cert.key_pem,
        client_ca_pem=ca.pem,
        tracer_provider=provider,
        **kwargs,
    )
    return Harness(ca, server_ca, running, broker, logins, policy_path, exporter), provider


@contextlib.asynccontextmanager
async def started_harness(tmp_path: Path, **kwargs: Any) -> AsyncIterator[Harness]:
    """:func:`make_harness` (same arguments), stopped on exit with its channels closed."""
    h, provider = await make_harness(tmp_path, **kwargs)
    try:
        yield h
    finally:
        for ch in h.channels:
            await ch.close()
        await h.running.stop(None)
        provider.shutdown()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with started_harness(tmp_path) as h:
        yield h
