"""TEST-CATALOGUE E09: the server certificate and the client CA bundle rotate without a restart.

A real grpc.aio server on port 0 with ``dynamic_ssl_server_credentials``; PKI generated per test.
The reloader checks the files before every handshake (``poll_interval=0``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.errors import ConfigError
from broker.server.app import RunningServer, start_server
from broker.server.gen.broker.v1 import broker_pb2
from broker.server.policy import PolicyHolder
from broker.server.tls import ServerTlsReloader
from tests.server.conftest import APP, POLICY, stub
from tests.server.fakes import FakeBroker, FakeLogins, make_grant
from tests.server.pki import Ca, Issued
from tests.server.rpc import mtls_channel

HANG_GUARD_S = 30.0  # turns a hang into a failure; never asserted on


@dataclass
class Rig:
    dir: Path
    reloader: ServerTlsReloader
    running: RunningServer
    broker: FakeBroker
    channels: list[Any] = field(default_factory=list)

    def write(self, server: Issued, client_ca_pem: bytes) -> None:
        # New files replace the old ones atomically (rename), as a cert manager would.
        for name, data in (
            ("server.pem", server.cert_pem),
            ("server.key", server.key_pem),
            ("clients.pem", client_ca_pem),
        ):
            tmp = self.dir / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(self.dir / name)

    def channel(self, client: Issued, server_ca: Ca) -> Any:
        ch = mtls_channel(self.running.port, client, server_ca.pem)
        self.channels.append(ch)
        return ch


def server_cert(ca: Ca) -> Issued:
    return ca.issue(cn="broker.test", dns=("broker.test",), server=True)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Rig, Ca, Ca]]:
    client_ca, server_ca = Ca("clients-1"), Ca("servers-1")
    (tmp_path / "policy.toml").write_text(POLICY)
    first = server_cert(server_ca)
    paths = (tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "clients.pem")
    paths[0].write_bytes(first.cert_pem)
    paths[1].write_bytes(first.key_pem)
    paths[2].write_bytes(client_ca.pem)
    reloader = ServerTlsReloader(*paths, poll_interval=0.0)
    broker = FakeBroker(make_grant("g-1", "crm"))
    running = await start_server(
        broker=broker,
        logins=FakeLogins(),
        policy=PolicyHolder(tmp_path / "policy.toml"),
        bind="127.0.0.1:0",
        server_cert_pem=first.cert_pem,
        server_key_pem=first.key_pem,
        client_ca_pem=client_ca.pem,
        tls_reloader=reloader,
    )
    r = Rig(tmp_path, reloader, running, broker)
    yield r, client_ca, server_ca
    for ch in r.channels:
        await ch.close()
    await running.stop(None)


async def get_token(channel: Any) -> Any:
    return await stub(channel).GetAccessToken(
        broker_pb2.GetAccessTokenRequest(grant_id="g-1"), timeout=HANG_GUARD_S
    )


async def health_check(channel: Any) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=HANG_GUARD_S
    )
    return int(reply.status)


async def test_e09_rotation_new_cert_new_bundle_old_ca_rejected_in_flight_completes(
    rig: tuple[Rig, Ca, Ca],
) -> None:
    r, old_clients, old_servers = rig
    old_client = old_clients.issue(uris=(APP,))
    old_channel = r.channel(old_client, old_servers)
    assert (await get_token(old_channel)).token.access_token

    # An RPC is in flight on the old connection while the files rotate.
    r.broker.gate = asyncio.Event()
    r.broker.entered.clear()
    in_flight = asyncio.create_task(get_token(old_channel))
    async with asyncio.timeout(HANG_GUARD_S):
        await r.broker.entered.wait()

    new_clients, new_servers = Ca("clients-2"), Ca("servers-2")
    r.write(server_cert(new_servers), new_clients.pem)  # the new bundle drops the old CA

    # New handshakes: the new server certificate and only the new client CA.
    new_client = new_clients.issue(uris=(APP,))
    assert await health_check(r.channel(new_client, new_servers)) == 1  # SERVING
    assert r.reloader.generation == 2
    assert r.reloader.client_ca_pem == new_clients.pem

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health_check(r.channel(old_clients.issue(uris=(APP,)), new_servers))
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # client cert of the removed CA

    with pytest.raises(grpc.aio.AioRpcError) as untrusted:
        await health_check(r.channel(new_client, old_servers))
    assert untrusted.value.code() is grpc.StatusCode.UNAVAILABLE  # server now has the new cert

    r.broker.gate.set()
    reply = await in_flight
    assert reply.token.access_token  # the in-flight RPC completed


async def test_e09_broken_files_keep_the_previous_certificates(
    rig: tuple[Rig, Ca, Ca],
) -> None:
    r, clients, servers = rig
    (r.dir / "clients.pem").write_bytes(b"not a certificate")
    client = clients.issue(uris=(APP,))
    assert await health_check(r.channel(client, servers)) == 1
    assert r.reloader.failures == 1 and r.reloader.generation == 1

    leaf_ca_bundle = clients.issue(cn="leaf").cert_pem  # a leaf, not a CA
    (r.dir / "clients.pem").write_bytes(leaf_ca_bundle)
    assert await health_check(r.channel(client, servers)) == 1
    assert r.reloader.failures == 2

    other = server_cert(Ca("servers-x"))
    (r.dir / "server.key").write_bytes(other.key_pem)  # key no longer matches the cert
    (r.dir / "clients.pem").write_bytes(clients.pem)
    assert await health_check(r.channel(client, servers)) == 1
    assert r.reloader.failures == 3 and r.reloader.generation == 1


def test_e09_invalid_files_at_start_are_config_errors(tmp_path: Path) -> None:
    ca = Ca("c")
    good = server_cert(ca)
    paths = (tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "c.pem")
    paths[0].write_bytes(good.cert_pem)
    paths[1].write_bytes(server_cert(ca).key_pem)
    paths[2].write_bytes(ca.pem)
    with pytest.raises(ConfigError, match="does not match"):
        ServerTlsReloader(*paths)
    paths[1].write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not valid PEM"):
        ServerTlsReloader(*paths)
    paths[1].unlink()
    with pytest.raises(ConfigError, match="unreadable"):
        ServerTlsReloader(*paths)


def test_e09_fetch_checks_files_at_most_once_per_interval(tmp_path: Path) -> None:
    ca = Ca("c")
    first, second = server_cert(ca), server_cert(ca)
    paths = (tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "c.pem")
    paths[0].write_bytes(first.cert_pem)
    paths[1].write_bytes(first.key_pem)
    paths[2].write_bytes(ca.pem)
    now = [100.0]
    reloader = ServerTlsReloader(*paths, poll_interval=5.0, monotonic=lambda: now[0])
    paths[0].write_bytes(second.cert_pem)
    paths[1].write_bytes(second.key_pem)
    assert reloader.fetch() is None  # inside the interval: not even looked at
    assert reloader.server_cert_pem == first.cert_pem
    now[0] += 5.0
    assert reloader.fetch() is not None
    assert reloader.server_cert_pem == second.cert_pem
    now[0] += 5.0
    assert reloader.fetch() is None  # unchanged files: keep the configuration
