"""The HTTPS listener app, driven in-process through httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.errors import AuthServerUnavailable, InvalidArgument
from broker.login import LoginService, LoginState, LoginView
from broker.web.app import create_app
from tests.login.fakes import ISSUER, REDIRECT_URI, FakeClient

POST_LOGIN = "https://portal.example.org/done"


def ref_and_state(view: LoginView) -> tuple[str, str]:
    q = parse_qs(urlsplit(view.authorization_url or "").query)
    return q["request_uri"][0].rsplit("/", 1)[1], q["state"][0]


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def web(
    service: LoginService, spans: InMemorySpanExporter
) -> AsyncIterator[httpx.AsyncClient]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app = create_app(service, redirect_uri=REDIRECT_URI, tracer_provider=provider)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://broker.example.org") as c:
        yield c


async def test_c07_request_object_is_the_exact_jws_with_the_jar_media_type(
    web: httpx.AsyncClient, service: LoginService
) -> None:
    view = await service.start(label="ops")
    ref, _ = ref_and_state(view)
    first = await web.get(f"/request-objects/{ref}")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/oauth-authz-req+jwt"
    assert first.headers["cache-control"] == "no-store"
    assert first.text == (await service.request_object(ref))
    assert not first.text.endswith("\n") and first.text.count(".") == 2
    second = await web.get(f"/request-objects/{ref}")
    assert second.status_code == 200 and second.text == first.text


async def test_c07_other_methods_and_paths_are_refused(
    web: httpx.AsyncClient, service: LoginService
) -> None:
    view = await service.start(label="ops")
    ref, _ = ref_and_state(view)
    assert (await web.head(f"/request-objects/{ref}")).status_code == 405
    assert (await web.options(f"/request-objects/{ref}")).status_code == 405
    assert (await web.post(f"/request-objects/{ref}")).status_code == 405
    assert (await web.get(f"/request-objects/{ref[:-1]}")).status_code == 404
    assert (await web.get("/request-objects/")).status_code == 404
    assert (await web.get(f"/request-objects/{ref}/..")).status_code == 404
    assert (await web.get("/request-objects/..%2Fhealthz")).status_code == 404
    assert (await web.get(f"/request-objects/{ref}%2F..%2F..%2Fhealthz")).status_code == 404
    assert (await web.get("/admin")).status_code == 404


async def test_healthz(web: httpx.AsyncClient) -> None:
    resp = await web.get("/healthz")
    assert resp.status_code == 200 and resp.text == "ok"


async def test_callback_completes_the_login_then_the_request_object_is_gone(
    web: httpx.AsyncClient, service: LoginService, spans: InMemorySpanExporter
) -> None:
    view = await service.start(label="ops")
    ref, state = ref_and_state(view)
    resp = await web.get("/callback", params={"code": "c-1", "state": state, "iss": ISSUER})
    assert resp.status_code == 200
    assert "Login complete" in resp.text
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["referrer-policy"] == "no-referrer"
    assert (await web.get(f"/request-objects/{ref}")).status_code == 404
    assert (await service.get(view.login_id)).grant_id == "grant-1"
    names = [s.name for s in spans.get_finished_spans()]
    assert names == ["web.callback", "web.request_object"]
    callback_span = spans.get_finished_spans()[0]
    assert callback_span.attributes is not None
    assert callback_span.attributes["grant.id"] == "grant-1"
    # H02: no span attribute carries the code, the state or the request object.
    for span in spans.get_finished_spans():
        for value in (span.attributes or {}).values():
            assert value != "c-1" and state not in str(value)


async def test_c03_callback_with_wrong_state_shows_failure_and_keeps_the_login(
    web: httpx.AsyncClient, service: LoginService, fake_client: FakeClient
) -> None:
    view = await service.start(label="ops")
    resp = await web.get("/callback", params={"code": "c", "state": "nope", "iss": ISSUER})
    assert resp.status_code == 400
    assert "unknown_state" in resp.text and "nope" not in resp.text
    assert fake_client.calls == []
    assert (await service.get(view.login_id)).state == "pending"


async def test_callback_rejects_duplicated_parameters(
    web: httpx.AsyncClient, service: LoginService, fake_client: FakeClient
) -> None:
    view = await service.start(label="ops")
    _, state = ref_and_state(view)
    resp = await web.get(f"/callback?code=a&code=b&state={state}&iss={ISSUER}")
    assert resp.status_code == 400
    assert fake_client.calls == []


async def test_c02_callback_error_response_page(
    web: httpx.AsyncClient, service: LoginService, spans: InMemorySpanExporter
) -> None:
    view = await service.start(label="ops")
    _, state = ref_and_state(view)
    resp = await web.get(
        "/callback", params={"error": "access_denied", "state": state, "iss": ISSUER}
    )
    assert resp.status_code == 400
    assert "authorization_error" in resp.text
    attrs = spans.get_finished_spans()[-1].attributes or {}
    assert attrs["oauth.as_error"] == "access_denied"


async def test_c10_callback_never_redirects_to_a_caller_supplied_url(
    service: LoginService,
) -> None:
    app = create_app(service, redirect_uri=REDIRECT_URI, post_login_url=POST_LOGIN)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://broker.example.org"
    ) as web:
        view = await service.start(label="ops")
        _, state = ref_and_state(view)
        resp = await web.get(
            "/callback",
            params={
                "code": "c",
                "state": state,
                "iss": ISSUER,
                "next": "https://evil.example",
                "redirect": "https://evil.example",
            },
        )
        assert resp.status_code == 303
        assert resp.headers["location"] == POST_LOGIN
        # A failing callback does not redirect anywhere.
        bad = await web.get("/callback", params={"state": "x", "next": "https://evil.example"})
        assert bad.status_code == 400 and "location" not in bad.headers


async def test_dome_restart_redirects_the_user_agent_to_the_new_authorization_url(
    web: httpx.AsyncClient, service: LoginService, fake_client: FakeClient
) -> None:
    fake_client.invalid_grant_times = 1
    view = await service.start(label="ops")
    _, state = ref_and_state(view)
    resp = await web.get("/callback", params={"code": "c", "state": state, "iss": ISSUER})
    assert resp.status_code == 303
    again = await service.get(view.login_id)
    assert again.restarted and resp.headers["location"] == again.authorization_url
    assert resp.headers["location"].startswith(f"{ISSUER}/auth?")


def test_callback_path_must_not_collide_with_other_routes(service: LoginService) -> None:
    for uri in ("https://b.example/healthz", "https://b.example/request-objects/x"):
        with pytest.raises(InvalidArgument):
            create_app(service, redirect_uri=uri)
    with pytest.raises(InvalidArgument):
        create_app(service, redirect_uri=REDIRECT_URI, post_login_url="javascript:alert(1)")


async def test_callback_restarts_the_login_when_the_token_endpoint_fails_transiently(
    web: httpx.AsyncClient, service: LoginService, fake_client: FakeClient
) -> None:
    """Issue 9: AS down during the exchange (5xx, timeout, empty 500): the login is not lost;
    the same browser is sent (303) to a new authorization request with a line saying why. Once
    the restart budget is spent, 503 with the reason code, never the code."""

    view = await service.start(label="ops")
    _, state = ref_and_state(view)
    fake_client.exchange_error = AuthServerUnavailable("AS down", status_code=500)
    resp = await web.get("/callback", params={"code": "c-9", "state": state, "iss": ISSUER})
    assert resp.status_code == 303, resp.text
    again = await service.get(view.login_id)
    assert again.state is LoginState.PENDING and again.restarted
    assert resp.headers["location"] == again.authorization_url
    assert again.authorization_url != view.authorization_url
    assert "temporary problem" in resp.text and "c-9" not in resp.text
    _, new_state = ref_and_state(again)
    assert new_state != state
    resp = await web.get("/callback", params={"code": "c-10", "state": new_state, "iss": ISSUER})
    assert resp.status_code == 503
    assert "as_unavailable" in resp.text and "c-10" not in resp.text
    assert (await service.get(view.login_id)).state is LoginState.FAILED
