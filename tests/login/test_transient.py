"""Issue 9 section 3: a transient failure of the token endpoint during the code exchange (5xx,
an empty 500, timeout, connection error) restarts the login in the same browser (new request
object, state, nonce, PKCE; 303 to the authorization endpoint) within the restart budget, instead
of ending it as FAILED. The real OAuthClient talks to a fake AS behind httpx.MockTransport (fault
injection); the callback goes through the real listener app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from broker.keys.soft import SoftKeyStore, SoftSigner
from broker.login import LoginService, LoginSettings, LoginState, LoginView
from broker.oauth.client import OAuthClient
from broker.oauth.config import ClientConfig
from broker.tokens.stores.logins import MemoryLoginStore
from broker.web.app import create_app
from tests.clock import FakeClock
from tests.login.fakes import BASE_URL, FakeSink
from tests.oauth.fakeas import ISSUER, REDIRECT_URI, FakeAS, form_of

Fault = Callable[[httpx.Request], httpx.Response]


def _raise(exc: type[httpx.TransportError]) -> Fault:
    def fault(request: httpx.Request) -> httpx.Response:
        raise exc("injected", request=request)

    return fault


FAULTS: dict[str, Fault] = {
    "empty_500": lambda _r: httpx.Response(500),
    "json_502": lambda _r: httpx.Response(502, json={"error": "bad_gateway"}),
    "503_html": lambda _r: httpx.Response(503, text="<html>down</html>"),
    "timeout": _raise(httpx.ReadTimeout),
    "connection_error": _raise(httpx.ConnectError),
}


class Sleeps:
    async def __call__(self, delay: float) -> None:
        return None


def state_of(view: LoginView) -> str:
    return parse_qs(urlsplit(view.authorization_url or "").query)["state"][0]


class Stack:
    def __init__(self, *, dome_compat: bool) -> None:
        keys = SoftKeyStore()
        keys.generate("client", b"\x01")
        self.signer: SoftSigner = keys.signer("client")
        self.config = ClientConfig(
            issuer=ISSUER,
            client_id=self.signer.kid,
            redirect_uri=REDIRECT_URI,
            dome_compat=dome_compat,
            use_par=False,
        )
        import time

        self.clock = FakeClock(now=float(int(time.time())))
        self.fake_as = FakeAS()
        self.faults: list[Fault] = []
        self.fake_as.token = self._token
        self.http = self.fake_as.client()
        self.client = OAuthClient(self.config, self.http, self.signer, self.clock, sleep=Sleeps())
        self.sink = FakeSink(clock=self.clock)
        self.store = MemoryLoginStore()
        self.logins = LoginService(
            self.client,
            self.config,
            self.signer,
            self.sink,
            self.clock,
            settings=LoginSettings(BASE_URL),
            store=self.store,
        )
        self.web = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(self.logins, redirect_uri=REDIRECT_URI)),
            base_url=BASE_URL,
        )

    def _token(self, request: httpx.Request) -> httpx.Response:
        if self.faults:
            return self.faults.pop(0)(request)
        nonce = self._nonce_of(form_of(request)["code"])
        body = {
            "access_token": "at-" + form_of(request)["code"],
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "rt-new",
            "id_token": self.fake_as.id_token(
                self.config.client_id, now=self.clock.now(), nonce=nonce
            ),
        }
        return httpx.Response(200, json=body)

    def _nonce_of(self, code: str) -> str:
        return self.codes[code]

    codes: dict[str, str]

    async def callback(self, view: LoginView, code: str) -> httpx.Response:
        """The AS sends the browser back with ``code`` for the login's current request."""
        url = view.authorization_url or ""
        nonce = parse_qs(urlsplit(url).query)["nonce"][0]
        self.codes[code] = nonce
        return await self.web.get(
            "/callback", params={"code": code, "state": state_of(view), "iss": ISSUER}
        )

    def token_verifiers(self) -> list[str]:
        return [f["code_verifier"] for f in self.fake_as.token_forms()]


@pytest.fixture(params=[True, False], ids=["dome_compat", "plain"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    s = Stack(dome_compat=request.param)
    s.codes = {}
    try:
        yield s
    finally:
        await s.web.aclose()
        await s.http.aclose()


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_transient_token_endpoint_failure_restarts_the_login_in_the_same_browser(
    stack: Stack, fault: str
) -> None:
    view = await stack.logins.start(label="ops")
    stack.faults = [FAULTS[fault]]
    first = await stack.callback(view, "code-1")
    assert first.status_code == 303, first.text
    again = await stack.logins.get(view.login_id)
    assert again.state is LoginState.PENDING and again.restarted
    assert first.headers["location"] == again.authorization_url
    assert urlsplit(again.authorization_url or "").path == "/oidc/authorize"
    assert state_of(again) != state_of(view)
    assert "temporary problem" in first.text
    assert "code-1" not in first.text
    # The old state is spent; the new one completes the login (second code).
    replay = await stack.callback(view, "code-1")
    assert replay.status_code == 400
    done = await stack.callback(again, "code-2")
    assert done.status_code == 200, done.text
    final = await stack.logins.get(view.login_id)
    assert final.state is LoginState.COMPLETED and final.grant_id == "grant-1"
    assert len(stack.sink.grants) == 1
    verifiers = stack.token_verifiers()
    assert len(verifiers) == 2 and verifiers[0] != verifiers[1]  # a new PKCE verifier


async def test_a_second_transient_failure_after_the_restart_fails_the_login(stack: Stack) -> None:
    view = await stack.logins.start(label="ops")
    stack.faults = [FAULTS["empty_500"], FAULTS["empty_500"]]
    assert (await stack.callback(view, "code-1")).status_code == 303
    again = await stack.logins.get(view.login_id)
    second = await stack.callback(again, "code-2")
    assert second.status_code == 503
    failed = await stack.logins.get(view.login_id)
    assert (failed.state, failed.error) == (LoginState.FAILED, "as_unavailable")
    assert stack.sink.grants == []


async def test_dome_invalid_grant_and_a_transient_failure_share_one_restart_budget() -> None:
    stack = Stack(dome_compat=True)
    stack.codes = {}
    try:
        view = await stack.logins.start(label="ops")
        stack.faults = [
            lambda _r: httpx.Response(400, json={"error": "invalid_grant"}),
            FAULTS["empty_500"],
        ]
        assert (await stack.callback(view, "code-1")).status_code == 303
        again = await stack.logins.get(view.login_id)
        assert (await stack.callback(again, "code-2")).status_code == 503
        assert (await stack.logins.get(view.login_id)).state is LoginState.FAILED
    finally:
        await stack.web.aclose()
        await stack.http.aclose()
