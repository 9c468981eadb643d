"""The gauges the store counts, as ``broker serve`` wires them (broker.app.health.store_gauges):
``broker.grants.reauthorization_required`` and ``broker.logins.pending`` read the shared store
with one COUNT each, on the event loop, from the metric exporter's thread. Before, neither was
ever observed (nothing registered a source, nothing called login_started).

Collections run on another thread (``asyncio.to_thread(reader.get_metrics_data)``), as the
periodic exporter does: the store query runs on the test's event loop meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from broker.app.health import store_gauges
from broker.errors import StoreError
from broker.keys.soft import SoftKeyStore, SoftSealer
from broker.login import LoginService, LoginSettings, LoginView
from broker.telemetry.metrics import BrokerMetrics
from broker.tokens.model import GrantStatus
from broker.tokens.stores.identities import LedgerStore
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from broker.web.app import create_app
from tests.clock import FakeClock
from tests.login.fakes import BASE_URL, ISSUER, REDIRECT_URI, FakeClient, FakeSink, client_config
from tests.tokens.stores.faulty_store import FaultyMemoryStore
from tests.tokens.stores.helpers import (
    drop_pg_schema,
    make_grant,
    pg_schema_name,
    postgres_dsn_or_skip,
)

PENDING = "broker.logins.pending"
REAUTH = "broker.grants.reauthorization_required"
Opener = Callable[[FakeClock], Awaitable[LedgerStore]]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> Iterator[BrokerMetrics]:
    provider = MeterProvider(metric_readers=[reader])
    yield BrokerMetrics(provider.get_meter("broker"))
    provider.shutdown()


async def gauges(reader: InMemoryMetricReader) -> dict[str, int]:
    """One collection, on the exporter's side of the fence (another thread)."""
    data = await asyncio.to_thread(reader.get_metrics_data)
    out: dict[str, int] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for point in m.data.data_points:
                    assert isinstance(point, NumberDataPoint)
                    out[m.name] = int(point.value)
    return out


@pytest.fixture(params=["sqlite", "postgres"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a store on one shared database (each call: another replica's connection)."""
    sealer = SoftSealer()
    opened: list[LedgerStore] = []
    if request.param == "sqlite":
        path = str(tmp_path / "grants.db")

        async def open_sqlite(clock: FakeClock) -> LedgerStore:
            opened.append(await SqliteGrantStore.connect(path, sealer, clock))
            return opened[-1]

        yield open_sqlite
        for store in opened:
            await store.close()
        return
    dsn = postgres_dsn_or_skip()
    schema = pg_schema_name()

    async def open_pg(clock: FakeClock) -> LedgerStore:
        opened.append(await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema))
        return opened[-1]

    try:
        yield open_pg
    finally:
        for store in opened:
            await store.close()
        drop_pg_schema(dsn, schema)


async def test_the_reauthorization_gauge_counts_the_grants_in_that_status(
    opener: Opener, metrics: BrokerMetrics, reader: InMemoryMetricReader
) -> None:
    clock = FakeClock()
    store = await opener(clock)
    for grant_id in ("g-1", "g-2", "g-3"):
        await store.create(make_grant(grant_id))
    store_gauges(metrics, store, lambda: asyncio.sleep(0, 0))
    assert (await gauges(reader))[REAUTH] == 0
    other_replica = await opener(clock)
    await other_replica.set_status("g-1", GrantStatus.REAUTHORIZATION_REQUIRED, reason="x")
    await other_replica.set_status("g-3", GrantStatus.REAUTHORIZATION_REQUIRED, reason="x")
    assert (await gauges(reader))[REAUTH] == 2


def _params(view: LoginView) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(view.authorization_url or "").query).items()}


async def test_pending_logins_go_0_1_0_on_every_replica_when_b_completes_what_a_started(
    opener: Opener, reader: InMemoryMetricReader
) -> None:
    clock = FakeClock()
    keys = SoftKeyStore()
    keys.generate("client", b"\x01")
    signer = keys.signer("client")
    sink = FakeSink(clock=clock)
    providers: list[MeterProvider] = []
    readers = [reader, InMemoryMetricReader()]
    services: list[LoginService] = []
    for replica_reader in readers:  # replica A, replica B: each its store connection, meter
        store = await opener(clock)
        logins = LoginService(
            FakeClient(),
            client_config(signer.kid, use_par=False),
            signer,
            sink,
            clock,
            settings=LoginSettings(BASE_URL),
            store=store,
        )
        providers.append(MeterProvider(metric_readers=[replica_reader]))
        metrics = BrokerMetrics(providers[-1].get_meter("broker"))
        store_gauges(metrics, store, logins.pending_count)
        services.append(logins)
    a, b = services
    try:
        assert [(await gauges(r))[PENDING] for r in readers] == [0, 0]
        view = await a.start(label="ops")
        assert [(await gauges(r))[PENDING] for r in readers] == [1, 1]
        app = create_app(b, redirect_uri=REDIRECT_URI)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL
        ) as web:
            state = _params(view)["state"]
            done = await web.get("/callback", params={"code": "c", "state": state, "iss": ISSUER})
        assert done.status_code == 200, done.text
        assert [(await gauges(r))[PENDING] for r in readers] == [0, 0]
        # Expired without anyone coming back: counted no more.
        await a.start(label="late")
        assert (await gauges(reader))[PENDING] == 1
        clock.advance(LoginSettings(BASE_URL).login_ttl + 1)
        assert (await gauges(reader))[PENDING] == 0
    finally:
        for provider in providers:
            provider.shutdown()


async def test_a_store_error_gives_no_point_and_one_warning_until_it_answers_again(
    metrics: BrokerMetrics, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyMemoryStore(FakeClock())
    await store.create(make_grant("g-1"))
    await store.set_status("g-1", GrantStatus.REAUTHORIZATION_REQUIRED, reason="x")
    store_gauges(metrics, store, lambda: asyncio.sleep(0, 3))
    caplog.set_level(logging.INFO, logger="broker.telemetry.loop_source")
    for _ in range(2):
        store.fail_next("count_by_status", StoreError("sqlite count_by_status failed (EIO)"))
        got = await gauges(reader)
        assert REAUTH not in got and got[PENDING] == 3  # the exporter carried on
    warnings = [r for r in caplog.records if r.name == "broker.telemetry.loop_source"]
    assert len(warnings) == 1 and REAUTH in warnings[0].getMessage()
    assert "StoreError" in warnings[0].getMessage()
    assert (await gauges(reader))[REAUTH] == 1
    store.fail_next("count_by_status", StoreError("again"))
    assert REAUTH not in await gauges(reader)
    warnings = [r for r in caplog.records if r.name == "broker.telemetry.loop_source"]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.INFO, logging.WARNING]


async def test_a_collection_on_the_event_loops_own_thread_reports_nothing_and_never_waits(
    metrics: BrokerMetrics, reader: InMemoryMetricReader
) -> None:
    store = FaultyMemoryStore(FakeClock())
    store_gauges(metrics, store, lambda: asyncio.sleep(0, 1))
    data = reader.get_metrics_data()  # on the loop: waiting for the loop would deadlock
    names = (
        set()
        if data is None
        else {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    )
    assert not names & {PENDING, REAUTH}
    assert (await gauges(reader)) == {PENDING: 1, REAUTH: 0}


async def test_detached_sources_wait_for_the_query_in_flight_then_report_nothing_silently(
    tmp_path: Path,
    metrics: BrokerMetrics,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At stop the sources are detached before the store closes: a query running then ends
    first, and an export landing after the close reports neither gauge and logs nothing."""
    caplog.set_level(logging.INFO, logger="broker.telemetry.loop_source")
    store = await SqliteGrantStore.connect(str(tmp_path / "g.db"), SoftSealer(), FakeClock())
    await store.create(make_grant("g-1"))
    await store.set_status("g-1", GrantStatus.REAUTHORIZATION_REQUIRED, reason="x")
    entered, release = asyncio.Event(), asyncio.Event()

    async def pending() -> int:
        entered.set()
        await release.wait()
        return 4

    handle = store_gauges(metrics, store, pending)
    collecting = asyncio.ensure_future(gauges(reader))
    await asyncio.wait_for(entered.wait(), 30)
    detaching = asyncio.ensure_future(handle.detach())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not detaching.done()  # the pending-logins query is still running
    release.set()
    await asyncio.wait_for(detaching, 30)
    assert (await collecting) == {REAUTH: 1, PENDING: 4}  # answered with the store open
    await store.close()
    assert not {REAUTH, PENDING} & set(await gauges(reader))
    assert [r for r in caplog.records if r.name == "broker.telemetry.loop_source"] == []
