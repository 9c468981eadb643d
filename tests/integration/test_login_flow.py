"""The full login flow against the real oidc-provider peer, with the client key in SoftHSM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from broker.errors import InvalidGrant
from broker.jose import unverified_parts
from broker.keys.api import Signer
from broker.login import LoginState, LoginView
from devtools.peer import Peer, Pki
from tests.integration.conftest import SwappableApp
from tests.integration.flow import ShiftedClock, Stack, follow_to_callback, make_stack

pytestmark = [pytest.mark.peer, pytest.mark.softhsm]


@pytest.fixture
async def http(pki: Pki) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=pki.ssl_context()) as client:
        yield client


@pytest.fixture
async def user_agent(pki: Pki) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping user agent that does not follow redirects by itself."""
    async with httpx.AsyncClient(verify=pki.ssl_context(), follow_redirects=False) as client:
        yield client


@dataclass
class Env:
    peer: Peer
    signer: Signer
    web: SwappableApp
    base_url: str
    http: httpx.AsyncClient


@pytest.fixture
def env(
    peer: Peer,
    client_signer: Signer,
    broker_web: SwappableApp,
    broker_base_url: str,
    http: httpx.AsyncClient,
) -> Env:
    peer.reset_log()
    return Env(peer, client_signer, broker_web, broker_base_url, http)


@pytest.fixture
def stack(
    peer: Peer,
    client_signer: Signer,
    broker_web: SwappableApp,
    broker_base_url: str,
    http: httpx.AsyncClient,
) -> Stack:
    peer.reset_log()
    return make_stack(peer, client_signer, broker_web, broker_base_url, http)


def params_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def request_uri_of(view: LoginView) -> str:
    return params_of(view.authorization_url or "")["request_uri"][0]


async def test_full_flow_by_reference_then_three_rotating_refreshes(
    stack: Stack, peer: Peer, user_agent: httpx.AsyncClient, client_signer: Signer
) -> None:
    view = await stack.login.start(label="ops")
    assert view.state is LoginState.PENDING
    callback_url, resp = await follow_to_callback(
        user_agent, view.authorization_url or "", stack.config.redirect_uri
    )
    assert resp.status_code == 200, resp.text
    assert params_of(callback_url)["iss"] == [peer.issuer]  # RFC 9207: the peer sends iss
    done = await stack.login.get(view.login_id)
    assert done.state is LoginState.COMPLETED
    assert done.grant_id == "grant-1"
    ((tokens, label, issuer, client_id),) = stack.sink.grants
    assert (label, issuer, client_id) == ("ops", peer.issuer, client_signer.kid)
    at_claims = unverified_parts(tokens.access_token)[1]
    assert at_claims["aud"] == client_signer.kid
    assert at_claims["vc"]["type"] == ["LEARCredentialEmployee", "VerifiableCredential"]
    assert "LEARCredentialEmployee" in tokens.id_claims["vc_json"]
    subject = tokens.subject
    assert subject is not None and tokens.refresh_token is not None

    refresh_tokens = [tokens.refresh_token]
    for _ in range(3):
        refreshed = await stack.client.refresh(refresh_tokens[-1], subject=subject)
        assert refreshed.refresh_token is not None
        assert refreshed.refresh_token not in refresh_tokens  # rotated
        assert refreshed.access_token != tokens.access_token
        refresh_tokens.append(refreshed.refresh_token)

    log = peer.admin_log()
    grant_types = [t["grant_type"] for t in log["token_requests"]]
    assert grant_types == ["authorization_code"] + ["refresh_token"] * 3
    # Each refresh presented the refresh token returned by the previous response.
    sent = [t["form"]["refresh_token"] for t in log["token_requests"][1:]]
    assert sent == refresh_tokens[:3]
    assert all(t["status"] == 200 for t in log["token_requests"])

    # A rotated-out refresh token is rejected by the AS (and, RFC 9700 4.14.2, the AS then
    # revokes the whole family, so the latest one dies with it).
    with pytest.raises(InvalidGrant):
        await stack.client.refresh(refresh_tokens[1], subject=subject)
    with pytest.raises(InvalidGrant):
        await stack.client.refresh(refresh_tokens[-1], subject=subject)


async def test_dome_fidelity_what_the_as_received(
    stack: Stack, peer: Peer, user_agent: httpx.AsyncClient, client_signer: Signer
) -> None:
    """DOME-PROFILE.md: the request object and the client assertion, as the AS saw them."""
    did = client_signer.kid
    assert client_signer.mechanism.startswith("CKM_ECDSA")  # the key is in SoftHSM
    view = await stack.login.start(label="ops")
    query = params_of(view.authorization_url or "")
    await follow_to_callback(user_agent, view.authorization_url or "", stack.config.redirect_uri)
    log = peer.admin_log()

    (fetch,) = [r for r in log["request_objects"] if r["request_uri"] == request_uri_of(view)]
    assert fetch["ok"] and fetch["fetched"]
    assert fetch["header"] == {"alg": "ES256", "typ": "oauth-authz-req+jwt", "kid": did}
    ro = fetch["claims"]
    assert ro["client_id"] == ro["iss"] == did
    assert ro["aud"] == peer.issuer
    assert ro["scope"] == query["scope"][0] == "openid learcredential"
    assert ro["redirect_uri"] == query["redirect_uri"][0] == stack.config.redirect_uri
    assert ro["state"] == query["state"][0] and ro["nonce"] == query["nonce"][0]
    assert ro["code_challenge"] == query["code_challenge"][0]
    assert ro["code_challenge_method"] == "S256"
    assert 0 < ro["exp"] - ro["iat"] <= 600
    auth = log["authorizations"][0]["query"]
    assert auth["client_id"] == did and auth["request_uri"] == request_uri_of(view)

    (token_request,) = log["token_requests"]
    form = token_request["form"]
    assert form["grant_type"] == "authorization_code"
    assert form["client_id"] == did  # Spring requires it
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "state" not in form
    assert len(form["code_verifier"]) >= 43
    header, claims = token_request["assertion"]["header"], token_request["assertion"]["claims"]
    assert header["alg"] == "ES256" and header["kid"] == did  # bare did, never a DID URL
    assert header.get("typ", "JWT") == "JWT"
    assert claims["iss"] == claims["sub"] == did
    assert claims["aud"] == peer.issuer
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert claims["jti"]


async def test_full_flow_via_par(env: Env, user_agent: httpx.AsyncClient) -> None:
    peer, client_signer = env.peer, env.signer
    stack = make_stack(peer, client_signer, env.web, env.base_url, env.http, use_par=True)
    view = await stack.login.start(label="par")
    query = params_of(view.authorization_url or "")
    assert sorted(query) == ["client_id", "request_uri"]
    assert query["request_uri"][0].startswith("urn:ietf:params:oauth:request_uri:")
    _, resp = await follow_to_callback(
        user_agent, view.authorization_url or "", stack.config.redirect_uri
    )
    assert resp.status_code == 200, resp.text
    assert (await stack.login.get(view.login_id)).state is LoginState.COMPLETED
    log = peer.admin_log()
    (par,) = log["par_requests"]
    assert par["status"] == 201
    assert par["request"]["claims"]["client_id"] == client_signer.kid
    assert log["request_objects"] == []  # nothing fetched by reference
    ((tokens, *_),) = stack.sink.grants
    assert tokens.refresh_token is not None and tokens.subject is not None
    refreshed = await stack.client.refresh(tokens.refresh_token, subject=tokens.subject)
    assert refreshed.refresh_token != tokens.refresh_token


async def test_c07_request_object_refetch_while_pending_then_404_after_completion(
    stack: Stack, peer: Peer, user_agent: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    view = await stack.login.start(label="ops")
    request_uri = request_uri_of(view)
    first = await http.get(request_uri)
    second = await http.get(request_uri)
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"] == "application/oauth-authz-req+jwt"
    assert first.text == second.text
    await follow_to_callback(user_agent, view.authorization_url or "", stack.config.redirect_uri)
    assert (await stack.login.get(view.login_id)).state is LoginState.COMPLETED
    assert (await http.get(request_uri)).status_code == 404
    assert (await http.head(request_uri)).status_code in (404, 405)


async def test_expired_login_is_never_completed(env: Env, user_agent: httpx.AsyncClient) -> None:
    peer = env.peer
    clock = ShiftedClock()
    stack = make_stack(peer, env.signer, env.web, env.base_url, env.http, login_clock=clock)
    view = await stack.login.start(label="ops")
    clock.offset = 601.0
    assert (await stack.login.get(view.login_id)).state is LoginState.EXPIRED
    callback_url, resp = await follow_to_callback(
        user_agent, view.authorization_url or "", stack.config.redirect_uri
    )
    # The AS could not load the withdrawn request object and says so on the redirect.
    assert params_of(callback_url)["error"] == ["invalid_request_uri"]
    assert resp.status_code == 400
    assert "login_expired" in resp.text
    assert (await stack.login.get(view.login_id)).state is LoginState.EXPIRED
    assert peer.admin_log()["token_requests"] == []
    assert stack.sink.grants == []


async def test_c03_wrong_state_is_rejected_and_the_real_response_still_completes(
    stack: Stack, peer: Peer, user_agent: httpx.AsyncClient
) -> None:
    view = await stack.login.start(label="ops")
    redirect_uri = stack.config.redirect_uri
    # Follow the AS but stop before delivering the authorization response.
    url = view.authorization_url or ""
    for _ in range(10):
        resp = await user_agent.get(url)
        url = httpx.URL(url).join(resp.headers["location"]).__str__()
        if url.startswith(redirect_uri + "?"):
            break
    params = params_of(url)
    forged = httpx.URL(redirect_uri).copy_merge_params(
        {"code": params["code"][0], "state": "x" * 43, "iss": peer.issuer}
    )
    bad = await user_agent.get(forged)
    assert bad.status_code == 400
    assert "unknown_state" in bad.text
    assert peer.admin_log()["token_requests"] == []
    assert (await stack.login.get(view.login_id)).state is LoginState.PENDING
    good = await user_agent.get(url)
    assert good.status_code == 200
    assert (await stack.login.get(view.login_id)).state is LoginState.COMPLETED
    replay = await user_agent.get(url)
    assert replay.status_code == 400
    assert len(peer.admin_log()["token_requests"]) == 1


async def test_dome_restart_after_invalid_grant_completes_on_the_same_login(
    stack: Stack, peer: Peer, user_agent: httpx.AsyncClient
) -> None:
    """DOME bug 1 played on the peer: the code is spent before the broker exchanges it (on the
    Verifier another login or a refresh would have overwritten it), the exchange answers
    invalid_grant, the login restarts once, and the user agent's second pass completes it."""
    view = await stack.login.start(label="ops")
    url = view.authorization_url or ""
    redirect_uri = stack.config.redirect_uri
    for _ in range(10):
        resp = await user_agent.get(url)
        url = str(httpx.URL(url).join(resp.headers["location"]))
        if url.startswith(redirect_uri + "?"):
            break
    pending = await stack.login._store.login_by_id(view.login_id)  # test-only peek at secrets
    assert pending is not None and pending.secrets is not None
    await stack.client.exchange_code(
        params_of(url)["code"][0],
        code_verifier=pending.secrets.code_verifier,
        nonce=pending.secrets.nonce,
    )
    restart = await user_agent.get(url)
    assert restart.status_code == 303
    again = await stack.login.get(view.login_id)
    assert again.state is LoginState.PENDING and again.restarted
    assert restart.headers["location"] == again.authorization_url
    _, final = await follow_to_callback(user_agent, again.authorization_url or "", redirect_uri)
    assert final.status_code == 200, final.text
    done = await stack.login.get(view.login_id)
    assert done.state is LoginState.COMPLETED and done.restarted
    statuses = [(t["grant_type"], t["error"]) for t in peer.admin_log()["token_requests"]]
    assert statuses == [
        ("authorization_code", None),
        ("authorization_code", "invalid_grant"),
        ("authorization_code", None),
    ]


async def test_h02_no_secret_in_spans_or_logs_during_a_full_flow(
    env: Env, user_agent: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    caplog.set_level(logging.DEBUG)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stack = make_stack(
        env.peer, env.signer, env.web, env.base_url, env.http, tracer_provider=provider
    )
    view = await stack.login.start(label="ops")
    query = params_of(view.authorization_url or "")
    callback_url, resp = await follow_to_callback(
        user_agent, view.authorization_url or "", stack.config.redirect_uri
    )
    assert resp.status_code == 200
    ((tokens, *_),) = stack.sink.grants
    assert tokens.refresh_token is not None and tokens.subject is not None
    refreshed = await stack.client.refresh(tokens.refresh_token, subject=tokens.subject)
    secrets_seen = [
        query["state"][0],
        query["nonce"][0],
        query["code_challenge"][0],
        request_uri_of(view).rsplit("/", 1)[1],
        params_of(callback_url)["code"][0],
        tokens.access_token,
        tokens.refresh_token,
        refreshed.access_token,
        refreshed.refresh_token or "",
    ]
    names = {s.name for s in exporter.get_finished_spans()}
    assert {"web.request_object", "web.callback", "oauth.token_request"} <= names
    texts = [
        f"{s.name} {dict(s.attributes or {})} {[e.attributes for e in s.events]}"
        for s in exporter.get_finished_spans()
    ]
    # The user agent (the test's "browser") logs its own URLs through httpx: those carry state
    # and code by design and are not the broker's. Everything else logged is scanned.
    browser = (
        f"HTTP Request: GET {env.peer.issuer}/",
        f"HTTP Request: GET {env.base_url}/callback",
    )
    texts += [
        record.getMessage()
        for record in caplog.records
        if not (record.name == "httpx" and record.getMessage().startswith(browser))
        and not record.name.startswith("httpcore")
    ]
    assert any("/token" in t for t in texts)  # the broker's own requests were scanned
    for text in texts:
        assert "eyJ" not in text
        for secret in secrets_seen:
            assert secret not in text
