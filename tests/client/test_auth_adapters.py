"""The httpx and requests adapters put the broker's token in ``Authorization: Bearer`` and retry
a 401 once with a token asked of the real broker again. The resource server is an httpx
MockTransport / a requests transport adapter (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from broker_client import (
    AsyncBrokerClient,
    AsyncTokenSource,
    BrokerClient,
    TokenSource,
    aio_secure_channel,
    secure_channel,
)
from broker_client.httpx_auth import BrokerAuth as HttpxBrokerAuth
from broker_client.requests_auth import BrokerAuth as RequestsBrokerAuth
from requests.adapters import HTTPAdapter

from tests.client.conftest import FakeClock, LiveBroker

ROTATED = "Bearer at-rotated-0"


class ResourceServer:
    """Accepts one bearer token; records the Authorization header and body of each request."""

    def __init__(self, accepted: str | None = ROTATED) -> None:
        self.accepted = accepted
        self.seen: list[tuple[str | None, bytes]] = []

    def status(self, authorization: str | None, body: bytes) -> int:
        self.seen.append((authorization, body))
        return 200 if authorization == self.accepted else 401

    def httpx_handler(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(self.status(request.headers.get("Authorization"), request.content))


class RequestsStub(HTTPAdapter):
    """A transport adapter that answers in process instead of opening a connection."""

    def __init__(self, server: ResourceServer) -> None:
        super().__init__()
        self.server = server

    def send(  # noqa: PLR0917  (requests' own signature)
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        raw = request.body
        if isinstance(raw, bytes | str | None):
            body = raw.encode() if isinstance(raw, str) else raw or b""
        else:
            body = b"".join(raw)  # a streamed body is consumed by sending it
        response = requests.Response()
        response.status_code = self.server.status(request.headers.get("Authorization"), body)
        response._content = b"{}"
        response.request = request
        response.url = request.url or ""
        response.connection = self
        return response


@pytest.fixture
def source(live: LiveBroker) -> Iterator[TokenSource]:
    files = live.files()
    with (
        secure_channel(
            live.target, ca=files.ca, cert=files.cert, key=files.key, server_name="broker.test"
        ) as channel,
        TokenSource(BrokerClient(channel), "g-1", clock=FakeClock()) as source,
    ):
        yield source


def rotate(live: LiveBroker) -> None:
    """The broker now holds another token than the one the source has cached."""
    live.change_grant("g-1", access_token="at-rotated")


def test_httpx_retries_a_401_once_with_a_fresh_token(live: LiveBroker, source: TokenSource) -> None:
    assert source.token().access_token == "at-g-1-0"
    rotate(live)
    server = ResourceServer()
    with httpx.Client(transport=httpx.MockTransport(server.httpx_handler)) as http:
        response = http.post("https://rs.test/x", content=b"payload", auth=HttpxBrokerAuth(source))
    assert response.status_code == 200
    assert server.seen == [("Bearer at-g-1-0", b"payload"), (ROTATED, b"payload")]
    assert source.token().access_token == "at-rotated-0"


def test_httpx_returns_the_second_401(live: LiveBroker, source: TokenSource) -> None:
    server = ResourceServer(accepted=None)
    with httpx.Client(transport=httpx.MockTransport(server.httpx_handler)) as http:
        response = http.get("https://rs.test/x", auth=HttpxBrokerAuth(source))
    assert response.status_code == 401
    assert len(server.seen) == 2


def test_httpx_without_401_makes_no_extra_broker_call(
    live: LiveBroker, source: TokenSource
) -> None:
    server = ResourceServer(accepted="Bearer at-g-1-0")
    with httpx.Client(transport=httpx.MockTransport(server.httpx_handler)) as http:
        assert http.get("https://rs.test/x", auth=HttpxBrokerAuth(source)).status_code == 200
    assert len(server.seen) == 1
    assert len(live.calls("get_access_token")) <= 1  # the first token: watch or one GET


async def test_httpx_async_flow_retries_a_401_once(live: LiveBroker) -> None:
    files = live.files()
    channel = aio_secure_channel(
        live.target, ca=files.ca, cert=files.cert, key=files.key, server_name="broker.test"
    )
    server = ResourceServer()
    async with AsyncTokenSource(AsyncBrokerClient(channel), "g-1", clock=FakeClock()) as src:
        assert (await src.token()).access_token == "at-g-1-0"
        rotate(live)
        transport = httpx.MockTransport(server.httpx_handler)
        async with httpx.AsyncClient(transport=transport) as http:
            response = await http.get("https://rs.test/x", auth=HttpxBrokerAuth(src))
    await channel.close()
    assert response.status_code == 200
    assert [auth for auth, _ in server.seen] == ["Bearer at-g-1-0", ROTATED]


async def test_httpx_async_flow_with_a_blocking_source(
    live: LiveBroker, source: TokenSource
) -> None:
    server = ResourceServer(accepted="Bearer at-g-1-0")
    async with httpx.AsyncClient(transport=httpx.MockTransport(server.httpx_handler)) as http:
        response = await http.get("https://rs.test/x", auth=HttpxBrokerAuth(source))
    assert response.status_code == 200


def test_requests_retries_a_401_once_with_a_fresh_token(
    live: LiveBroker, source: TokenSource
) -> None:
    assert source.token().access_token == "at-g-1-0"
    rotate(live)
    server = ResourceServer()
    with requests.Session() as http:
        http.mount("https://rs.test/", RequestsStub(server))
        response = http.post("https://rs.test/x", data=b"payload", auth=RequestsBrokerAuth(source))
    assert response.status_code == 200
    assert server.seen == [("Bearer at-g-1-0", b"payload"), (ROTATED, b"payload")]
    assert [r.status_code for r in response.history] == [401]


def test_requests_returns_the_second_401(live: LiveBroker, source: TokenSource) -> None:
    server = ResourceServer(accepted=None)
    with requests.Session() as http:
        http.mount("https://rs.test/", RequestsStub(server))
        response = http.get("https://rs.test/x", auth=RequestsBrokerAuth(source))
    assert response.status_code == 401
    assert len(server.seen) == 2


def test_requests_does_not_resend_a_streamed_body(live: LiveBroker, source: TokenSource) -> None:
    server = ResourceServer(accepted=None)
    with requests.Session() as http:
        http.mount("https://rs.test/", RequestsStub(server))
        response = http.post(
            "https://rs.test/x", data=iter([b"a", b"b"]), auth=RequestsBrokerAuth(source)
        )
    assert response.status_code == 401
    assert len(server.seen) == 1
