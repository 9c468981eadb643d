"""The listener's pages: landing page, callback outcomes, start links and abandoned logins.

Driven in-process through httpx's ASGI transport with the real LoginService (fake AS client).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from broker.login import LoginService, LoginState, LoginView
from broker.web import pages
from broker.web.app import create_app
from broker.web.links import COOKIE_NAME, BrowserLinks, LinkedLogins
from tests.clock import FakeClock
from tests.login.fakes import BASE_URL, ISSUER, REDIRECT_URI, FakeClient

EXPECTED_HEADERS = {
    "content-type": "text/html; charset=utf-8",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def state_of(view: LoginView) -> str:
    return parse_qs(urlsplit(view.authorization_url or "").query)["state"][0]


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE_NAME}={token}"}


def assert_html_headers(resp: httpx.Response) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert resp.headers.get(name) == value, name
    csp = [d.strip() for d in resp.headers["content-security-policy"].split(";")]
    assert csp[0] == "default-src 'none'"
    assert set(csp[2:]) == {"frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"}
    # The one style element is allowed by its hash, nothing else.
    style = re.search(r"<style>(.*?)</style>", resp.text, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert csp[1] == f"style-src 'sha256-{digest}'"


def assert_self_contained(text: str) -> None:
    lowered = text.lower()
    for banned in ("<script", "<link", "<img", "<iframe", "<form", "src=", "href=", "style="):
        assert banned not in lowered, banned
    assert lowered.count("<style>") == 1


@pytest.fixture
def links(clock: FakeClock) -> BrowserLinks:
    return BrowserLinks(BASE_URL, clock)


@pytest.fixture
async def web(service: LoginService, links: BrowserLinks) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service, redirect_uri=REDIRECT_URI, links=links)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL
    ) as client:
        yield client


async def follow_start_link(
    web: httpx.AsyncClient, service: LoginService, links: BrowserLinks
) -> tuple[LoginView, str]:
    """Start a login as a gRPC caller would see it, follow its start link; returns the view
    (with the AS's authorization URL) and the cookie the link set."""
    linked = await LinkedLogins(service, links).start(label="ops", owner="app")
    assert (linked.authorization_url or "").startswith(f"{BASE_URL}/start/")
    resp = await web.get(linked.authorization_url or "")
    assert resp.status_code == 303
    assert_html_headers(resp)
    view = await service.get(linked.login_id)
    assert resp.headers["location"] == view.authorization_url
    assert state_of(view) not in resp.text
    set_cookie = resp.headers["set-cookie"]
    name, _, rest = set_cookie.partition("=")
    token, *attrs = [part.strip() for part in rest.split(";")]
    assert name == COOKIE_NAME == "__Host-broker-login"
    assert {"Path=/", "Secure", "HttpOnly", "SameSite=Lax"} <= set(attrs)
    assert f"Max-Age={round(view.expires_at - 1_800_000_000.0)}" in attrs
    web.cookies.clear()  # every later request names its cookie explicitly
    return view, token


async def test_landing_page_is_plain_html_with_the_security_headers(
    web: httpx.AsyncClient,
) -> None:
    resp = await web.get("/")
    assert resp.status_code == 200
    assert_html_headers(resp)
    assert_self_contained(resp.text)
    assert "Token broker" in resp.text and "start a new login" in resp.text
    assert "set-cookie" not in resp.headers


async def test_landing_page_without_links_is_still_served(service: LoginService) -> None:
    app = create_app(service, redirect_uri=REDIRECT_URI)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as c:
        resp = await c.get("/", headers=cookie("x.y"))
    assert resp.status_code == 200
    assert_html_headers(resp)


async def test_callback_completed_page(web: httpx.AsyncClient, service: LoginService) -> None:
    view = await service.start(label="ops")
    state = state_of(view)
    resp = await web.get("/callback", params={"code": "c-42", "state": state, "iss": ISSUER})
    assert resp.status_code == 200
    assert_html_headers(resp)
    assert_self_contained(resp.text)
    assert "Login complete" in resp.text
    for secret in ("c-42", state, view.login_id, "at-c-42", "rt-c-42"):
        assert secret not in resp.text


async def test_callback_failed_page_gives_a_human_reason(
    web: httpx.AsyncClient, service: LoginService
) -> None:
    view = await service.start(label="ops")
    state = state_of(view)
    resp = await web.get(
        "/callback", params={"error": "access_denied", "state": state, "iss": ISSUER}
    )
    assert resp.status_code == 400
    assert_html_headers(resp)
    assert "Login failed" in resp.text
    assert "refused or cancelled" in resp.text and "authorization_error" in resp.text
    assert state not in resp.text and view.login_id not in resp.text


async def test_callback_expired_page(
    web: httpx.AsyncClient, service: LoginService, clock: FakeClock
) -> None:
    view = await service.start(label="ops")
    clock.advance(601)
    resp = await web.get("/callback", params={"code": "c", "state": state_of(view), "iss": ISSUER})
    assert resp.status_code == 400
    assert_html_headers(resp)
    assert "Login expired" in resp.text and "login_expired" in resp.text


async def test_callback_restart_is_a_303_page_that_carries_the_new_cookie(
    web: httpx.AsyncClient, service: LoginService, fake_client: FakeClient, links: BrowserLinks
) -> None:
    fake_client.invalid_grant_times = 1
    view, _ = await follow_start_link(web, service, links)
    resp = await web.get("/callback", params={"code": "c", "state": state_of(view), "iss": ISSUER})
    assert resp.status_code == 303
    assert_html_headers(resp)
    assert "Restarting the login" in resp.text
    again = await service.get(view.login_id)
    assert resp.headers["location"] == again.authorization_url
    assert state_of(again) not in resp.text
    new_token = resp.headers["set-cookie"].split(";")[0].partition("=")[2]
    assert links.matches(new_token, again)
    # The user agent of the restarted login times out at the AS and lands on "/": abandoned.
    landed = await web.get("/", headers=cookie(new_token))
    assert "Login abandoned" in landed.text
    assert (await service.get(view.login_id)).error == "login_abandoned"


async def test_duplicate_parameter_page_escapes_and_has_headers(
    web: httpx.AsyncClient,
) -> None:
    resp = await web.get("/callback?state=a&state=b")
    assert resp.status_code == 400
    assert_html_headers(resp)
    assert "malformed" in resp.text


def test_every_text_is_escaped() -> None:
    page = pages.Page("<b>t</b>", ("<script>alert(1)</script>", "\"q\" & 'a'"), tone='x"y')
    text = pages.render(page)
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;t&lt;/b&gt;" in text and "&quot;q&quot; &amp; &#x27;a&#x27;" in text
    assert 'class="x&quot;y"' in text
    failed = pages.render(pages.failed("<img src=x>"))
    assert "<img" not in failed and "&lt;img src=x&gt;" in failed


async def test_login_abandoned_when_the_user_agent_comes_back_to_the_landing_page(
    web: httpx.AsyncClient, service: LoginService, fake_client: FakeClient, links: BrowserLinks
) -> None:
    view, token = await follow_start_link(web, service, links)
    resp = await web.get("/", headers=cookie(token))
    assert resp.status_code == 200
    assert_html_headers(resp)
    assert_self_contained(resp.text)
    assert "Login abandoned" in resp.text and "start a new login" in resp.text
    assert view.login_id not in resp.text and token not in resp.text
    cleared = resp.headers["set-cookie"]
    assert cleared.startswith(f"{COOKIE_NAME}=;") and "Max-Age=0" in cleared
    ended = await service.get(view.login_id)
    assert ended.state is LoginState.FAILED and ended.error == "login_abandoned"
    # The AS's late answer finds nothing to complete; no code is exchanged.
    late = await web.get("/callback", params={"code": "c", "state": state_of(view), "iss": ISSUER})
    assert late.status_code == 400 and fake_client.calls == []
    # A second visit abandons nothing more.
    again = await web.get("/", headers=cookie(token))
    assert "Login abandoned" not in again.text and "Token broker" in again.text


async def test_landing_page_never_touches_a_completed_login(
    web: httpx.AsyncClient, service: LoginService, links: BrowserLinks
) -> None:
    view, token = await follow_start_link(web, service, links)
    done = await web.get(
        "/callback",
        params={"code": "c", "state": state_of(view), "iss": ISSUER},
        headers=cookie(token),
    )
    assert done.status_code == 200 and "Max-Age=0" in done.headers["set-cookie"]
    resp = await web.get("/", headers=cookie(token))
    assert "Login abandoned" not in resp.text
    after = await service.get(view.login_id)
    assert after.state is LoginState.COMPLETED and after.grant_id == "grant-1"


async def test_forged_or_foreign_cookie_and_head_abandon_nothing(
    web: httpx.AsyncClient, service: LoginService, links: BrowserLinks
) -> None:
    view, token = await follow_start_link(web, service, links)
    forged = f"{view.login_id}.{'A' * 22}"
    for value in (forged, view.login_id, "", "x" * 500):
        resp = await web.get("/", headers=cookie(value))
        assert resp.status_code == 200 and "Login abandoned" not in resp.text
    head = await web.head("/", headers=cookie(token))
    assert head.status_code == 200
    assert (await service.get(view.login_id)).state is LoginState.PENDING
    # A start link needs the token, not just the login id.
    bad = await web.get(f"/start/{forged}")
    assert bad.status_code == 404
    assert_html_headers(bad)
    assert "set-cookie" not in bad.headers and "location" not in bad.headers


async def test_start_link_of_a_finished_login_is_unknown(
    web: httpx.AsyncClient, service: LoginService, links: BrowserLinks
) -> None:
    linked = await LinkedLogins(service, links).start(label="ops", owner="app")
    view = await service.get(linked.login_id)
    await web.get("/callback", params={"code": "c", "state": state_of(view), "iss": ISSUER})
    resp = await web.get(linked.authorization_url or "")
    assert resp.status_code == 404 and "Unknown login link" in resp.text
    assert (await LinkedLogins(service, links).get(linked.login_id, owner="app")).state is (
        LoginState.COMPLETED
    )
