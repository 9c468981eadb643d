"""LoginService against in-process fakes of the OAuth client and the grant sink."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from jwcrypto import jwk, jws

from broker.errors import (
    AuthorizationDenied,
    AuthorizationResponseError,
    InvalidArgument,
    InvalidGrant,
    LoginCapacityExceeded,
    LoginExpired,
    LoginNotFound,
    TokenValidationError,
)
from broker.jose import unverified_parts
from broker.keys.didkey import public_key_from_did
from broker.keys.soft import SoftSigner
from broker.login import LoginService, LoginSettings, LoginState, LoginView
from tests.clock import FakeClock
from tests.login.fakes import (
    BASE_URL,
    ISSUER,
    REDIRECT_URI,
    FakeClient,
    FakeSink,
    client_config,
    metadata,
)


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def ref_of(view: LoginView) -> str:
    assert view.authorization_url is not None
    request_uri = query(view.authorization_url)["request_uri"][0]
    assert request_uri.startswith(f"{BASE_URL}/request-objects/")
    return request_uri.rsplit("/", 1)[1]


def state_of(view: LoginView) -> str:
    assert view.authorization_url is not None
    return query(view.authorization_url)["state"][0]


async def test_c05_request_object_verifies_with_the_did_key_and_carries_the_rfc9101_claims(
    service: LoginService, signer: SoftSigner, clock: FakeClock
) -> None:
    view = await service.start(label="ops")
    token = await service.request_object(ref_of(view))
    assert token is not None
    key = jwk.JWK.from_pyca(public_key_from_did(signer.kid))
    checked = jws.JWS()
    checked.deserialize(token)
    checked.verify(key, alg="ES256")  # raises on a bad signature
    header, claims = unverified_parts(token)
    assert header == {"alg": "ES256", "typ": "oauth-authz-req+jwt", "kid": signer.kid}
    assert claims["iss"] == claims["client_id"] == signer.kid
    assert claims["aud"] == ISSUER
    assert claims["response_type"] == "code"
    assert claims["redirect_uri"] == REDIRECT_URI
    assert claims["scope"] == "openid learcredential"
    assert claims["code_challenge_method"] == "S256"
    assert clock.now() < claims["exp"] <= clock.now() + 3600
    assert clock.now() - 3600 <= claims["nbf"] <= clock.now()
    assert "request_uri" not in claims and "request" not in claims and "sub" not in claims
    other = await service.start(label="ops")
    other_token = await service.request_object(ref_of(other))
    assert other_token is not None
    assert unverified_parts(other_token)[1]["jti"] != claims["jti"]


async def test_c06_front_channel_duplicates_are_byte_identical_to_the_request_object(
    service: LoginService,
) -> None:
    view = await service.start(label="ops")
    assert view.state is LoginState.PENDING
    params = query(view.authorization_url or "")
    token = await service.request_object(ref_of(view))
    assert token is not None
    claims = unverified_parts(token)[1]
    for name in ("client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge"):
        assert params[name] == [claims[name]], name
    assert params["response_type"] == ["code"]
    assert params["code_challenge_method"] == ["S256"]
    assert len(params["request_uri"][0]) <= 512
    # C07: >= 128-bit unguessable path; C04: state / nonce are 256-bit URL-safe values.
    assert re.fullmatch(r"[A-Za-z0-9_\-]{43}", ref_of(view))
    assert re.fullmatch(r"[A-Za-z0-9_\-]{43}", params["state"][0])


async def test_c06_par_mode_front_channel_has_only_client_id_and_request_uri(
    fake_client: FakeClient, signer: SoftSigner, sink: FakeSink, clock: FakeClock
) -> None:
    service = LoginService(
        fake_client,
        client_config(signer.kid, use_par=True),
        signer,
        sink,
        clock,
        settings=LoginSettings(BASE_URL),
    )
    view = await service.start(label="ops")
    params = query(view.authorization_url or "")
    assert sorted(params) == ["client_id", "request_uri"]
    assert params["request_uri"] == ["urn:ietf:params:oauth:request_uri:par-1"]
    assert len(fake_client.pushed) == 1
    assert unverified_parts(fake_client.pushed[0])[1]["client_id"] == signer.kid
    # The login dies with the pushed request_uri (RFC 9126 expires_in = 60 s here).
    assert view.expires_at == clock.now() + 60


async def test_par_is_not_used_when_the_issuer_does_not_advertise_it(
    fake_client: FakeClient, signer: SoftSigner, sink: FakeSink, clock: FakeClock
) -> None:
    fake_client.md = metadata(par=False)
    service = LoginService(
        fake_client,
        client_config(signer.kid, use_par=True),
        signer,
        sink,
        clock,
        settings=LoginSettings(BASE_URL),
    )
    view = await service.start(label="ops")
    assert fake_client.pushed == []
    assert (await service.request_object(ref_of(view))) is not None


async def test_c07_request_object_is_served_repeatedly_while_pending_then_never_again(
    service: LoginService, fake_client: FakeClient, sink: FakeSink
) -> None:
    view = await service.start(label="ops")
    ref = ref_of(view)
    first = await service.request_object(ref)
    assert first is not None
    assert (await service.request_object(ref)) == first  # DOME fetches on every authorize hit
    done = await service.complete(code="code-1", state=state_of(view), iss=ISSUER)
    assert done.state is LoginState.COMPLETED
    assert done.grant_id == "grant-1"
    assert done.authorization_url is None
    assert (await service.request_object(ref)) is None
    assert (await service.get(view.login_id)).state is LoginState.COMPLETED
    tokens, label, issuer, client_id = sink.grants[0]
    assert (label, issuer, client_id) == ("ops", ISSUER, fake_client.calls[0].nonce and client_id)
    assert tokens.refresh_token == "rt-code-1"


async def test_c07_guessed_neighbouring_and_malformed_refs_are_not_served(
    service: LoginService,
) -> None:
    view = await service.start(label="ops")
    ref = ref_of(view)
    neighbour = ref[:-1] + ("A" if ref[-1] != "A" else "B")
    for guess in (
        neighbour,
        ref[:-1],
        ref + "A",
        "",
        "../healthz",
        ref.upper() if ref != ref.upper() else ref.lower(),
    ):
        assert (await service.request_object(guess)) is None, guess


async def test_code_exchange_uses_the_login_nonce_and_verifier_inside_the_exchange_gate(
    service: LoginService, fake_client: FakeClient
) -> None:
    view = await service.start(label="ops")
    token = await service.request_object(ref_of(view))
    assert token is not None
    claims = unverified_parts(token)[1]
    await service.complete(code="code-1", state=state_of(view), iss=ISSUER)
    (call,) = fake_client.calls
    assert call.gate_held
    assert call.code == "code-1"
    assert call.nonce == claims["nonce"]
    assert call.code_verifier is not None
    import base64
    import hashlib

    challenge = base64.urlsafe_b64encode(hashlib.sha256(call.code_verifier.encode()).digest())
    assert challenge.rstrip(b"=").decode() == claims["code_challenge"]


async def test_c03_missing_unknown_and_replayed_state_are_rejected(
    service: LoginService, fake_client: FakeClient
) -> None:
    view = await service.start(label="ops")
    with pytest.raises(AuthorizationResponseError) as missing:
        await service.complete(code="c", state=None, iss=ISSUER)
    assert missing.value.reason == "missing_state"
    with pytest.raises(AuthorizationResponseError) as unknown:
        await service.complete(code="c", state="x" * 43, iss=ISSUER)
    assert unknown.value.reason == "unknown_state"
    assert fake_client.calls == []
    assert (
        await service.get(view.login_id)
    ).state is LoginState.PENDING  # a wrong state harms nothing
    await service.complete(code="c", state=state_of(view), iss=ISSUER)
    with pytest.raises(AuthorizationResponseError) as replay:
        await service.complete(code="c2", state=state_of(view), iss=ISSUER)
    assert replay.value.reason == "unknown_state"
    assert len(fake_client.calls) == 1


async def test_c03_state_of_another_login_completes_only_that_login(service: LoginService) -> None:
    a = await service.start(label="a")
    b = await service.start(label="b")
    await service.complete(code="c", state=state_of(b), iss=ISSUER)
    assert (await service.get(a.login_id)).state is LoginState.PENDING
    assert (await service.get(b.login_id)).state is LoginState.COMPLETED


@pytest.mark.parametrize(
    "bad_iss",
    [
        "https://other.example.org",
        f"{ISSUER}/",
        f"{ISSUER}/tenant",
        ISSUER.replace(":", "%3A"),
        ISSUER.upper(),
    ],
)
async def test_c01_wrong_iss_aborts_before_any_token_request_and_leaves_the_login_pending(
    service: LoginService, fake_client: FakeClient, bad_iss: str
) -> None:
    """A response with a foreign iss is not this AS's answer: it is rejected, and it cannot end
    the login either (whoever holds the state could otherwise kill it); the real response
    still completes it."""
    view = await service.start(label="ops")
    with pytest.raises(AuthorizationResponseError) as err:
        await service.complete(code="c", state=state_of(view), iss=bad_iss)
    assert err.value.reason == "iss_mismatch"
    assert fake_client.calls == []
    assert (await service.get(view.login_id)) == view
    assert (await service.request_object(ref_of(view))) is not None
    done = await service.complete(code="c", state=state_of(view), iss=ISSUER)
    assert done.state is LoginState.COMPLETED


async def test_c02_missing_iss_is_rejected_when_the_issuer_advertises_it(
    service: LoginService, fake_client: FakeClient
) -> None:
    view = await service.start(label="ops")
    with pytest.raises(AuthorizationResponseError) as err:
        await service.complete(code="c", state=state_of(view), iss=None)
    assert err.value.reason == "iss_missing"
    assert fake_client.calls == []
    assert (await service.get(view.login_id)) == view


async def test_missing_iss_is_accepted_when_the_issuer_does_not_send_it(
    fake_client: FakeClient, signer: SoftSigner, sink: FakeSink, clock: FakeClock
) -> None:
    fake_client.md = metadata(iss_supported=False)  # DOME v2 sends no iss
    service = LoginService(
        fake_client,
        client_config(signer.kid),
        signer,
        sink,
        clock,
        settings=LoginSettings(BASE_URL),
    )
    view = await service.start(label="ops")
    done = await service.complete(code="c", state=state_of(view), iss=None)
    assert done.state is LoginState.COMPLETED


async def test_c02_error_response_with_a_foreign_iss_is_not_attributed_to_our_issuer(
    service: LoginService,
) -> None:
    view = await service.start(label="ops")
    with pytest.raises(AuthorizationResponseError) as err:
        await service.complete(
            code=None, state=state_of(view), iss="https://evil.example", error="access_denied"
        )
    assert not isinstance(err.value, AuthorizationDenied)
    assert err.value.reason == "iss_mismatch"
    assert (await service.get(view.login_id)) == view  # not attributed: the login goes on


async def test_c02_error_response_fails_the_login_with_the_error_code(
    service: LoginService, fake_client: FakeClient
) -> None:
    view = await service.start(label="ops")
    with pytest.raises(AuthorizationDenied) as err:
        await service.complete(code=None, state=state_of(view), iss=ISSUER, error="access_denied")
    assert err.value.error == "access_denied"
    assert (await service.get(view.login_id)).error == "authorization_error"
    assert fake_client.calls == []
    other = await service.start(label="ops")
    with pytest.raises(AuthorizationDenied) as weird:
        await service.complete(
            code=None, state=state_of(other), iss=ISSUER, error="access_denied\n"
        )
    assert weird.value.error == "invalid_error_code"


async def test_missing_code_is_rejected_and_leaves_the_login_pending(
    service: LoginService,
) -> None:
    """A response without code or error is malformed, not an answer that ends the login."""
    view = await service.start(label="ops")
    for code in ("", None):
        with pytest.raises(AuthorizationResponseError) as err:
            await service.complete(code=code, state=state_of(view), iss=ISSUER)
        assert err.value.reason == "missing_code"
    assert (await service.get(view.login_id)) == view
    done = await service.complete(code="c", state=state_of(view), iss=ISSUER)
    assert done.state is LoginState.COMPLETED


async def test_expired_login_is_reported_and_its_request_object_withdrawn(
    service: LoginService, clock: FakeClock, fake_client: FakeClient
) -> None:
    view = await service.start(label="ops")
    ref, state = ref_of(view), state_of(view)
    clock.advance(599)
    assert (await service.get(view.login_id)).state is LoginState.PENDING
    clock.advance(1)
    expired = await service.get(view.login_id)
    assert expired.state is LoginState.EXPIRED
    assert expired.authorization_url is None
    assert (await service.request_object(ref)) is None
    with pytest.raises(LoginExpired):
        await service.complete(code="c", state=state, iss=ISSUER)
    assert fake_client.calls == []
    clock.advance(600)  # forgotten after the retention: then the state is simply unknown
    with pytest.raises(AuthorizationResponseError) as err:
        await service.complete(code="c", state=state, iss=ISSUER)
    assert err.value.reason == "unknown_state"


async def test_expired_login_callback_raises_login_expired(
    service: LoginService, clock: FakeClock
) -> None:
    view = await service.start(label="ops")
    clock.advance(601)
    with pytest.raises(LoginExpired):
        await service.complete(code="c", state=state_of(view), iss=ISSUER)
    assert (await service.get(view.login_id)).state is LoginState.EXPIRED


async def test_finished_logins_are_forgotten_after_the_retention(
    service: LoginService, clock: FakeClock
) -> None:
    view = await service.start(label="ops")
    await service.complete(code="c", state=state_of(view), iss=ISSUER)
    clock.advance(599)
    assert (await service.get(view.login_id)).state is LoginState.COMPLETED
    clock.advance(1)
    with pytest.raises(LoginNotFound):
        (await service.get(view.login_id))
    with pytest.raises(LoginNotFound):
        (await service.get("no-such-login"))


async def test_pending_logins_are_bounded(
    fake_client: FakeClient, signer: SoftSigner, sink: FakeSink, clock: FakeClock
) -> None:
    service = LoginService(
        fake_client,
        client_config(signer.kid),
        signer,
        sink,
        clock,
        settings=LoginSettings(BASE_URL, max_pending=2),
    )
    first = await service.start(label="ops")
    await service.start(label="ops")
    with pytest.raises(LoginCapacityExceeded) as err:
        await service.start(label="ops")
    assert err.value.retryable
    await service.complete(code="c", state=state_of(first), iss=ISSUER)
    assert (await service.start(label="ops")).state is LoginState.PENDING
    clock.advance(601)  # expired logins free their slots
    await service.start(label="ops")
    await service.start(label="ops")
    assert (await service.pending_count()) == 2


async def test_dome_invalid_grant_restarts_the_login_once_on_the_same_login_id(
    service: LoginService, fake_client: FakeClient
) -> None:
    fake_client.invalid_grant_times = 1
    view = await service.start(label="ops")
    old_ref, old_state = ref_of(view), state_of(view)
    restarted = await service.complete(code="c1", state=old_state, iss=ISSUER)
    assert restarted.login_id == view.login_id
    assert restarted.state is LoginState.PENDING
    assert restarted.restarted
    assert restarted.authorization_url not in (None, view.authorization_url)
    assert (await service.request_object(old_ref)) is None
    new_ref = ref_of(restarted)
    assert (await service.request_object(new_ref)) is not None
    with pytest.raises(AuthorizationResponseError):
        await service.complete(code="c1", state=old_state, iss=ISSUER)
    done = await service.complete(code="c2", state=state_of(restarted), iss=ISSUER)
    assert done.state is LoginState.COMPLETED
    assert done.restarted
    assert [c.code for c in fake_client.calls] == ["c1", "c2"]
    assert fake_client.calls[0].nonce != fake_client.calls[1].nonce
    assert fake_client.calls[0].code_verifier != fake_client.calls[1].code_verifier


async def test_dome_restart_happens_only_once(
    service: LoginService, fake_client: FakeClient
) -> None:
    fake_client.invalid_grant_times = 2
    view = await service.start(label="ops")
    restarted = await service.complete(code="c1", state=state_of(view), iss=ISSUER)
    with pytest.raises(InvalidGrant):
        await service.complete(code="c2", state=state_of(restarted), iss=ISSUER)
    failed = await service.get(view.login_id)
    assert failed.state is LoginState.FAILED
    assert failed.error == "invalid_grant"


async def test_without_dome_compat_invalid_grant_fails_the_login(
    fake_client: FakeClient, signer: SoftSigner, sink: FakeSink, clock: FakeClock
) -> None:
    service = LoginService(
        fake_client,
        client_config(signer.kid, dome_compat=False),
        signer,
        sink,
        clock,
        settings=LoginSettings(BASE_URL),
    )
    fake_client.invalid_grant_times = 1
    view = await service.start(label="ops")
    with pytest.raises(InvalidGrant):
        await service.complete(code="c1", state=state_of(view), iss=ISSUER)
    assert (await service.get(view.login_id)).state is LoginState.FAILED


async def test_b10_id_token_failure_stores_no_grant(
    service: LoginService, fake_client: FakeClient, sink: FakeSink
) -> None:
    fake_client.exchange_error = TokenValidationError("bad nonce", reason="nonce_mismatch")
    view = await service.start(label="ops")
    with pytest.raises(TokenValidationError):
        await service.complete(code="c", state=state_of(view), iss=ISSUER)
    assert sink.grants == []
    assert (await service.get(view.login_id)).error == "nonce_mismatch"


@pytest.mark.parametrize("label", ["", " x", "a" * 129, "a/b", "x\n"])
async def test_bad_labels_are_rejected(service: LoginService, label: str) -> None:
    with pytest.raises(InvalidArgument):
        await service.start(label=label)
    assert (await service.pending_count()) == 0


async def test_default_label_is_used(service: LoginService) -> None:
    assert (await service.start()).label == "default"


def test_bad_login_settings_are_rejected() -> None:
    for base in ("broker.example.org", f"{BASE_URL}/"):
        with pytest.raises(InvalidArgument):
            LoginSettings(base)
    with pytest.raises(InvalidArgument):
        LoginSettings(BASE_URL, login_ttl=0)
    with pytest.raises(InvalidArgument):
        LoginSettings(BASE_URL, max_pending=0)
    with pytest.raises(InvalidArgument):
        LoginSettings(BASE_URL, max_restarts=-1)


async def test_h02_no_secret_in_reprs(service: LoginService) -> None:
    view = await service.start(label="ops")
    state = state_of(view)
    nonce = query(view.authorization_url or "")["nonce"][0]
    ref = ref_of(view)
    token = await service.request_object(ref)
    assert token is not None
    texts = [repr(view), repr(service), repr(await service._store.login_by_id(view.login_id))]
    for text in texts:
        for secret in (state, nonce, ref, token, view.authorization_url or "x"):
            assert secret not in text


async def test_dome_restart_in_par_mode_pushes_a_new_request(
    fake_client: FakeClient, signer: SoftSigner, sink: FakeSink, clock: FakeClock
) -> None:
    service = LoginService(
        fake_client,
        client_config(signer.kid, use_par=True),
        signer,
        sink,
        clock,
        settings=LoginSettings(BASE_URL),
    )
    fake_client.invalid_grant_times = 1
    view = await service.start(label="ops")
    first_state = unverified_parts(fake_client.pushed[0])[1]["state"]
    again = await service.complete(code="c1", state=first_state, iss=ISSUER)
    assert again.restarted and again.state is LoginState.PENDING
    assert len(fake_client.pushed) == 2
    assert query(again.authorization_url or "")["request_uri"] == [
        "urn:ietf:params:oauth:request_uri:par-2"
    ]
    second_state = unverified_parts(fake_client.pushed[1])[1]["state"]
    assert second_state != first_state
    done = await service.complete(code="c2", state=second_state, iss=ISSUER)
    assert done.state is LoginState.COMPLETED
    assert done.login_id == view.login_id
