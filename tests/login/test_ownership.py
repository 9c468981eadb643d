"""Logins belong to the caller that started them; a rejected response changes nothing
(TEST-CATALOGUE C03: state bound to its context; C01/C02: a foreign or missing iss)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from broker.errors import (
    AuthorizationDenied,
    AuthorizationResponseError,
    AuthServerUnavailable,
    LoginNotFound,
    PermissionDenied,
)
from broker.keys.soft import SoftSigner
from broker.login import LoginService, LoginSettings, LoginState, LoginView
from broker.oauth.metadata import ServerMetadata
from tests.clock import FakeClock
from tests.login.fakes import BASE_URL, ISSUER, FakeClient, FakeSink, client_config
from tests.login.test_service import ref_of, state_of

A = "spiffe://corp.example/a"
B = "spiffe://corp.example/b"


async def _not_found_message(call: Awaitable[LoginView]) -> str:
    with pytest.raises(LoginNotFound) as err:
        await call
    return err.value.message


async def test_c03_get_of_another_owners_login_is_not_found_like_an_unknown_id(
    service: LoginService,
) -> None:
    b = await service.start(label="ops", owner=B)
    with pytest.raises(LoginNotFound) as other:
        (await service.get(b.login_id, owner=A))
    with pytest.raises(LoginNotFound) as unknown:
        (await service.get("no-such-login", owner=A))
    assert (type(other.value), other.value.message) == (type(unknown.value), unknown.value.message)
    assert (await service.get(b.login_id, owner=B)) == b
    assert (await service.get(b.login_id)) == b  # in-process callers (CLI, tests) see every login


async def test_c03_login_started_in_process_belongs_to_no_remote_caller(
    service: LoginService,
) -> None:
    view = await service.start(label="ops")
    with pytest.raises(LoginNotFound):
        (await service.get(view.login_id, owner=A))
    with pytest.raises(LoginNotFound):
        await service.complete(code="c", state=state_of(view), iss=ISSUER, owner=A)
    assert (await service.get(view.login_id)) == view


Response = tuple[str | None, str | None, str | None]  # code, iss, error


@pytest.mark.parametrize(
    "response",
    [
        ("c", ISSUER, None),
        (None, ISSUER, "access_denied"),
        ("c", "https://evil.example", None),
        ("c", None, None),
        (None, None, None),
    ],
)
async def test_c03_complete_with_another_owners_state_is_not_found_and_changes_nothing(
    service: LoginService, fake_client: FakeClient, sink: FakeSink, response: Response
) -> None:
    """Whatever else the response says (a valid answer, the AS's error, a foreign or missing
    iss, no code), A with B's state learns only "no such login", as with a made-up state, and
    B's login is untouched: still pending, its request object served, B completes it."""
    code, iss, error = response
    b = await service.start(label="ops", owner=B)
    state = state_of(b)
    other = await _not_found_message(
        service.complete(code=code, state=state, iss=iss, error=error, owner=A)
    )
    unknown = await _not_found_message(
        service.complete(code=code, state="x" * 43, iss=iss, error=error, owner=A)
    )
    assert other == unknown
    assert fake_client.calls == [] and sink.grants == []
    assert (await service.get(b.login_id, owner=B)) == b
    assert (await service.request_object(ref_of(b))) is not None
    done = await service.complete(code="c", state=state, iss=ISSUER, owner=B)
    assert done.state is LoginState.COMPLETED
    assert done.grant_id == "grant-1"


async def test_c03_browser_callback_completes_the_login_whoever_started_it(
    service: LoginService,
) -> None:
    """On the HTTPS listener the state is the capability: no owner is asked for."""
    b = await service.start(label="ops", owner=B)
    done = await service.complete(code="c", state=state_of(b), iss=ISSUER)
    assert done.state is LoginState.COMPLETED
    assert (await service.get(b.login_id, owner=B)).grant_id == done.grant_id


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (("c", "https://evil.example", None), "iss_mismatch"),
        ((None, "https://evil.example", "access_denied"), "iss_mismatch"),
        (("c", None, None), "iss_missing"),
        ((None, ISSUER, None), "missing_code"),
    ],
)
async def test_c01_c02_rejected_response_from_the_owner_changes_nothing(
    service: LoginService, fake_client: FakeClient, response: Response, reason: str
) -> None:
    code, iss, error = response
    b = await service.start(label="ops", owner=B)
    with pytest.raises(AuthorizationResponseError) as err:
        await service.complete(code=code, state=state_of(b), iss=iss, error=error, owner=B)
    assert err.value.reason == reason
    assert not isinstance(err.value, AuthorizationDenied)
    assert fake_client.calls == []
    assert (await service.get(b.login_id, owner=B)) == b
    # ... and the real response, from the owner or the browser, still completes it.
    done = await service.complete(code="c", state=state_of(b), iss=ISSUER)
    assert done.state is LoginState.COMPLETED


async def test_c02_the_as_error_answer_from_the_owner_ends_the_login(
    service: LoginService, fake_client: FakeClient
) -> None:
    b = await service.start(label="ops", owner=B)
    with pytest.raises(AuthorizationDenied):
        await service.complete(
            code=None, state=state_of(b), iss=ISSUER, error="access_denied", owner=B
        )
    failed = await service.get(b.login_id, owner=B)
    assert (failed.state, failed.error) == (LoginState.FAILED, "authorization_error")
    assert (await service.request_object(ref_of(b))) is None
    assert fake_client.calls == []


async def test_label_check_refuses_before_anything_and_only_for_the_owner(
    service: LoginService, fake_client: FakeClient
) -> None:
    b = await service.start(label="crm", owner=B)
    asked: list[str] = []

    def deny(label: str) -> None:
        asked.append(label)
        raise PermissionDenied("permission denied")

    # A non-owner is told "no such login" before any policy question about the label.
    with pytest.raises(LoginNotFound):
        await service.complete(code="c", state=state_of(b), iss=ISSUER, owner=A, authorize=deny)
    assert asked == []
    with pytest.raises(PermissionDenied):
        await service.complete(code="c", state=state_of(b), iss=ISSUER, owner=B, authorize=deny)
    assert asked == ["crm"]
    assert fake_client.calls == []
    assert (await service.get(b.login_id, owner=B)) == b
    done = await service.complete(
        code="c", state=state_of(b), iss=ISSUER, owner=B, authorize=asked.append
    )
    assert done.state is LoginState.COMPLETED


async def test_as_discovery_down_during_completion_leaves_the_login_pending(
    service: LoginService, fake_client: FakeClient
) -> None:
    """Nothing happened to this login yet: the same response can be tried again."""
    b = await service.start(label="ops", owner=B)
    fake_client.metadata_error = AuthServerUnavailable("discovery down")
    with pytest.raises(AuthServerUnavailable):
        await service.complete(code="c", state=state_of(b), iss=ISSUER, owner=B)
    assert (await service.get(b.login_id, owner=B)) == b
    fake_client.metadata_error = None
    done = await service.complete(code="c", state=state_of(b), iss=ISSUER)
    assert done.state is LoginState.COMPLETED


class _SlowDiscoveryClient(FakeClient):
    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = 0

    async def metadata(self) -> ServerMetadata:
        self.waiting += 1
        await self.release.wait()
        return self.md


async def test_c03_two_responses_racing_over_discovery_exchange_one_code_only(
    signer: SoftSigner, sink: FakeSink, clock: FakeClock
) -> None:
    """The state is consumed only after the checks that follow the discovery await; the
    second response, checked again after it, is a replay."""
    slow = _SlowDiscoveryClient()
    slow.release.set()
    service = LoginService(
        slow, client_config(signer.kid), signer, sink, clock, settings=LoginSettings(BASE_URL)
    )
    b = await service.start(label="ops", owner=B)
    slow.release.clear()
    first = asyncio.create_task(service.complete(code="c1", state=state_of(b), iss=ISSUER))
    second = asyncio.create_task(
        service.complete(code="c2", state=state_of(b), iss=ISSUER, owner=B)
    )
    while slow.waiting < 3:  # start's discovery, then both responses
        await asyncio.sleep(0)
    slow.release.set()
    done = await first
    assert done.state is LoginState.COMPLETED
    with pytest.raises(LoginNotFound):  # consumed: for its owner, as unknown as any state
        await second
    assert [c.code for c in slow.calls] == ["c1"]
