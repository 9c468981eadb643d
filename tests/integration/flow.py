"""Helpers of the integration tests: the wiring of one broker login stack against the peer,
and a user agent that follows the AS's redirects without a browser."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin

import httpx
from opentelemetry.trace import TracerProvider

from broker.clock import Clock, SystemClock
from broker.keys.api import Signer
from broker.login import LoginService, LoginSettings
from broker.oauth.client import ClientReporting, OAuthClient
from broker.oauth.config import ClientConfig
from broker.web.app import create_app
from devtools.peer import Peer
from tests.integration.conftest import CALLBACK_PATH, SwappableApp
from tests.login.fakes import FakeSink


class ShiftedClock:
    """The system clock plus an offset (to expire logins without waiting)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._system = SystemClock()

    def now(self) -> float:
        return self._system.now() + self.offset

    def monotonic(self) -> float:
        return self._system.monotonic() + self.offset


@dataclass
class Stack:
    config: ClientConfig
    client: OAuthClient
    login: LoginService
    sink: FakeSink
    http: httpx.AsyncClient


def make_stack(
    peer: Peer,
    signer: Signer,
    web: SwappableApp,
    base_url: str,
    http: httpx.AsyncClient,
    *,
    use_par: bool = False,
    login_clock: Clock | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Stack:
    config = ClientConfig(
        issuer=peer.issuer,
        client_id=signer.kid,
        redirect_uri=base_url + CALLBACK_PATH,
        use_par=use_par,
    )
    clock = SystemClock()
    client = OAuthClient(
        config, http, signer, clock, reporting=ClientReporting(tracer_provider=tracer_provider)
    )
    sink = FakeSink()
    login = LoginService(
        client, config, signer, sink, login_clock or clock, settings=LoginSettings(base_url)
    )
    web.app = create_app(login, redirect_uri=config.redirect_uri, tracer_provider=tracer_provider)
    return Stack(config=config, client=client, login=login, sink=sink, http=http)


async def follow_to_callback(
    user_agent: httpx.AsyncClient, url: str, redirect_uri: str, *, max_hops: int = 10
) -> tuple[str, httpx.Response]:
    """GET ``url`` and follow the AS's redirects until one points at ``redirect_uri``; then
    deliver that redirect to the broker's callback. Returns (callback URL, callback response)."""
    for _ in range(max_hops):
        resp = await user_agent.get(url)
        if resp.status_code not in (302, 303, 307):
            raise AssertionError(f"the AS answered {resp.status_code}: {resp.text[:500]}")
        url = urljoin(url, resp.headers["location"])
        if url.startswith(redirect_uri + "?"):
            return url, await user_agent.get(url)
    raise AssertionError("too many redirects")
