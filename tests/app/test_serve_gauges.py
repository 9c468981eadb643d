"""The composition root (``broker.app.wiring.start``, what ``broker serve`` runs) started in
this process on the session's SoftHSM token, a SQLite store and loopback listeners, with a
:class:`~opentelemetry.sdk.metrics.export.InMemoryMetricReader` behind the
:class:`BrokerMetrics` it is given (the seam ``serve`` fills from ``[telemetry]``).

- while serving, ``broker.logins.pending`` and ``broker.grants.reauthorization_required`` are
  reported from the store (0 and 0, then 2 once another replica marks two grants): fails if
  ``start`` no longer registers the store gauges;
- after ``stop`` (store closed) and before the event loop ends, a collection (a periodic export
  landing then) reports neither gauge and logs nothing: fails if the gauges' sources still
  query the closed store (one WARNING).

Collections run on another thread, as the periodic exporter does. The AS is never contacted
(no machine grant, no login, no grant due).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from broker.app.settings import load_settings
from broker.app.wiring import start
from broker.config import Settings
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.soft import SoftSealer
from broker.telemetry import instruments
from broker.telemetry.metrics import BrokerMetrics
from broker.tokens.model import GrantStatus
from broker.tokens.stores.sqlite import SqliteGrantStore
from devtools.pki import Ca
from tests.clock import FakeClock
from tests.conftest import SoftHsmEnv
from tests.tokens.stores.helpers import make_grant

pytestmark = pytest.mark.softhsm

PENDING = instruments.PENDING_LOGINS.name
REAUTH = instruments.REAUTH_REQUIRED.name
STORE_GAUGES = {PENDING, REAUTH}
ISSUER = "https://verifier.example.org"  # never contacted


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    yield InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def settings(
    softhsm_env: SoftHsmEnv, hsm_store: Pkcs11KeyStore, tmp_path: Path
) -> Iterator[Settings]:
    """A complete ``broker.toml`` for an in-process serve: its own client and sealing keys on
    the session token (deleted after the test), a throw-away PKI, SQLite, listeners on
    loopback ephemeral ports."""
    label = f"serve-{uuid.uuid4().hex[:8]}"
    did = hsm_store.generate(label, uuid.uuid4().bytes[:4]).did
    hsm_store.generate_sealing_key(f"{label}-seal", uuid.uuid4().bytes[:4])
    ca = Ca("serve gauges test CA")
    server = ca.issue(cn="localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    files = {"ca.pem": ca.pem, "server.pem": server.cert_pem, "server-key.pem": server.key_pem}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).chmod(0o600)
    (tmp_path / "policy.toml").write_text('[identities."spiffe://test/app"]\nmethods = ["*"]\n')
    key_uri = (
        f"pkcs11:token={softhsm_env.token_label};object={label}"
        f"?pin-source=file:{softhsm_env.pin_file}"
    )
    path = tmp_path / "broker.toml"
    path.write_text(
        f"""[key]
uri = "{key_uri}"
sealing_key_label = "{label}-seal"

[oauth]
issuer = "{ISSUER}"
client_id = "{did}"
redirect_uri = "https://127.0.0.1/callback"

[web]
host = "127.0.0.1"
port = 0
public_base_url = "https://127.0.0.1"
tls_cert = "{tmp_path / "server.pem"}"
tls_key = "{tmp_path / "server-key.pem"}"

[grpc]
bind = "127.0.0.1:0"
server_cert = "{tmp_path / "server.pem"}"
server_key = "{tmp_path / "server-key.pem"}"
client_ca = "{tmp_path / "ca.pem"}"
policy_file = "{tmp_path / "policy.toml"}"

[store]
kind = "sqlite"
path = "{tmp_path / "broker.db"}"
"""
    )
    try:
        yield load_settings(path)
    finally:  # leave the shared token as we found it
        hsm_store.delete(label)
        hsm_store.delete(f"{label}-seal")


async def collect(reader: InMemoryMetricReader) -> dict[str, int]:
    """The store gauges' points of one collection, made on another thread (the exporter's)."""
    data = await asyncio.to_thread(reader.get_metrics_data)
    out: dict[str, int] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name in STORE_GAUGES:
                    for point in m.data.data_points:
                        assert isinstance(point, NumberDataPoint)
                        out[m.name] = int(point.value)
    return out


async def test_serve_reports_the_store_gauges_and_detaches_them_before_the_store_closes(
    settings: Settings,
    reader: InMemoryMetricReader,
    meter_provider: MeterProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="broker.telemetry.loop_source")
    metrics = BrokerMetrics(meter_provider.get_meter("broker"))
    service = await start(settings, metrics=metrics, meter_provider=meter_provider)
    stopped = False
    try:
        assert await collect(reader) == {PENDING: 0, REAUTH: 0}
        assert settings.store.path is not None
        other_replica = await SqliteGrantStore.connect(
            str(settings.store.path), SoftSealer(), FakeClock()
        )
        try:
            for grant_id in ("g-1", "g-2", "g-3"):
                await other_replica.create(
                    make_grant(grant_id, issuer=ISSUER, client_id=settings.oauth.client_id)
                )
            for grant_id in ("g-1", "g-3"):
                await other_replica.set_status(
                    grant_id, GrantStatus.REAUTHORIZATION_REQUIRED, reason="test"
                )
        finally:
            await other_replica.close()
        assert await collect(reader) == {PENDING: 0, REAUTH: 2}
        await service.stop()
        stopped = True
        # The store is closed; the loop runs on: an export landing now reports nothing.
        assert await collect(reader) == {}
        assert [r for r in caplog.records if r.name == "broker.telemetry.loop_source"] == []
    finally:
        if not stopped:
            await service.stop()
