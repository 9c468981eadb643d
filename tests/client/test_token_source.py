"""TokenSource / AsyncTokenSource against the real broker server: the watch stream keeps the
token current, GetAccessToken covers a stream that is down, and no token inside the margin is
ever served (TEST-CATALOGUE G08 from the caller's side: fake clock, absolute expires_at)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from broker_client import (
    AsyncBrokerClient,
    AsyncTokenSource,
    Backoff,
    BrokerClient,
    SourceClosed,
    TokenExpired,
    TokenSource,
    aio_secure_channel,
    secure_channel,
)

from tests.client.conftest import NOW, FakeClock, LiveBroker, async_wait_until, wait_until
from tests.server.conftest import APP, LABELLER

FAST = Backoff(initial=0.05, maximum=0.2)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client_for(live: LiveBroker, identity: str = APP) -> Iterator[BrokerClient]:
    files = live.files(identity)
    with secure_channel(
        live.target, ca=files.ca, cert=files.cert, key=files.key, server_name="broker.test"
    ) as channel:
        yield BrokerClient(channel)


@pytest.fixture
def client(live: LiveBroker) -> Iterator[BrokerClient]:
    yield from client_for(live)


@pytest.fixture
def labeller_client(live: LiveBroker) -> Iterator[BrokerClient]:
    yield from client_for(live, LABELLER)


def test_g08_serves_the_watched_token_without_a_get_call(
    live: LiveBroker, client: BrokerClient, clock: FakeClock
) -> None:
    with TokenSource(client, "g-1", clock=clock, backoff=FAST) as source:
        wait_until(lambda: source.cached is not None, "the first watched token")
        assert source.token().access_token == "at-g-1-0"
        assert source.watching
    assert live.calls("get_access_token") == []


def test_picks_up_a_renewal_from_the_watch_stream(
    live: LiveBroker, client: BrokerClient, clock: FakeClock
) -> None:
    with TokenSource(client, "g-1", clock=clock, backoff=FAST) as source:
        wait_until(lambda: source.cached is not None, "the first watched token")
        live.push(live.broker.token("g-1", 1))
        wait_until(lambda: source.token().access_token == "at-g-1-1", "the renewal from the stream")
        assert source.token().expires_at == 1_800_000_301.0
    assert live.calls("get_access_token") == []


def test_g08_never_serves_a_token_inside_the_margin(
    live: LiveBroker, client: BrokerClient, clock: FakeClock
) -> None:
    with TokenSource(client, "g-1", clock=clock, margin=30, backoff=FAST) as source:
        wait_until(lambda: source.cached is not None, "the first watched token")
        clock.now = NOW + 290  # 10 s left: inside the margin
        with pytest.raises(TokenExpired) as info:
            source.token()  # the broker still answers with the same token: refused
        assert info.value.retryable
        assert "at-g-1" not in str(info.value) + repr(info.value)
        assert live.calls("get_access_token") == [("get_access_token", "g-1", 35.0)]

        live.change_grant("g-1", access_expires_at=NOW + 900)
        fresh = source.token()  # blocking GetAccessToken, now answered with a fresh token
        assert fresh.expires_at == NOW + 900
        clock.now = NOW + 2000  # past every expiry
        with pytest.raises(TokenExpired):
            source.token()


def test_falls_back_to_get_access_token_when_the_watch_is_refused(
    live: LiveBroker,
    labeller_client: BrokerClient,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "broker_client")
    with TokenSource(labeller_client, "g-1", clock=clock, backoff=FAST) as source:
        wait_until(lambda: "PermissionDenied" in caplog.text, "the refused watch")
        assert source.token().access_token == "at-g-1-0"
        assert not source.watching
    assert len(live.calls("get_access_token")) == 1
    assert "at-g-1" not in caplog.text


def test_reopens_the_watch_stream_after_it_ends(
    live: LiveBroker, client: BrokerClient, clock: FakeClock
) -> None:
    with TokenSource(client, "g-1", clock=clock, backoff=FAST) as source:
        wait_until(lambda: len(live.calls("watch")) == 1, "the first stream")
        live.push(None)  # the server ends the stream
        wait_until(lambda: len(live.calls("watch")) == 2, "the stream to be reopened")
        live.push(live.broker.token("g-1", 2))
        wait_until(lambda: source.token().access_token == "at-g-1-2", "a renewal on the new stream")


def test_concurrent_callers_share_one_get_call(
    live: LiveBroker, client: BrokerClient, clock: FakeClock
) -> None:
    source = TokenSource(client, "g-1", clock=clock, watch=False)
    barrier = threading.Barrier(16)
    seen: list[str] = []

    def call() -> None:
        barrier.wait()
        seen.append(source.token().access_token)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    source.close()
    assert seen == ["at-g-1-0"] * 16
    assert len(live.calls("get_access_token")) == 1


def test_close_stops_the_watch_thread(live: LiveBroker, client: BrokerClient) -> None:
    source = TokenSource(client, "g-1", backoff=FAST)
    wait_until(lambda: source.cached is not None, "the first watched token")
    source.close()
    assert not any(t.name == "broker-watch-g-1" for t in threading.enumerate())
    with pytest.raises(SourceClosed):
        source.token()
    source.close()  # idempotent


def test_connect_owns_its_channel(live: LiveBroker) -> None:
    files = live.files()
    with TokenSource.connect(
        live.target, "g-1", ca=files.ca, cert=files.cert, key=files.key, server_name="broker.test"
    ) as source:
        assert source.token().access_token == "at-g-1-0"


# --- asyncio -------------------------------------------------------------------------------


async def test_async_picks_up_a_renewal_and_never_serves_inside_the_margin(
    live: LiveBroker, clock: FakeClock
) -> None:
    files = live.files()
    async with AsyncTokenSource.connect(
        live.target,
        "g-1",
        ca=files.ca,
        cert=files.cert,
        key=files.key,
        server_name="broker.test",
        clock=clock,
    ) as source:
        await async_wait_until(lambda: source.cached is not None, "the first watched token")
        live.push(live.broker.token("g-1", 1))
        await async_wait_until(
            lambda: source.cached is not None and source.cached.access_token == "at-g-1-1",
            "the renewal from the stream",
        )
        assert (await source.token()).access_token == "at-g-1-1"
        assert live.calls("get_access_token") == []

        clock.now = NOW + 290
        with pytest.raises(TokenExpired):
            await source.token()
        live.change_grant("g-1", access_expires_at=NOW + 900)
        assert (await source.token()).expires_at == NOW + 900
    with pytest.raises(SourceClosed):
        await source.token()


async def test_async_falls_back_when_the_watch_is_refused(
    live: LiveBroker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "broker_client")
    files = live.files(LABELLER)
    channel = aio_secure_channel(
        live.target, ca=files.ca, cert=files.cert, key=files.key, server_name="broker.test"
    )
    source = AsyncTokenSource(AsyncBrokerClient(channel), "g-1", clock=clock, backoff=FAST)
    try:
        await async_wait_until(lambda: "PermissionDenied" in caplog.text, "the refused watch")
        assert (await source.token()).access_token == "at-g-1-0"
        assert not source.watching
    finally:
        await source.close()
        await channel.close()
    assert len(live.calls("get_access_token")) == 1
