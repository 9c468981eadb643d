"""Logins belong to the caller that started them, through the real server with two client
identities and the real login service (over in-process fakes of the AS client and grant sink).

TEST-CATALOGUE C03 (state bound to its context), C01/C02 (a rejected response ends nothing), E05
(policy by label for logins as for grants).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from broker.keys.soft import SoftKeyStore
from broker.login import LoginService, LoginSettings
from broker.server.gen.broker.v1 import broker_pb2 as pb
from tests.clock import FakeClock
from tests.login.fakes import BASE_URL, ISSUER, FakeClient, FakeSink, client_config, metadata
from tests.server.conftest import Harness, started_harness
from tests.server.rpc import fails

A = "spiffe://corp.example/a"
B = "spiffe://corp.example/b"
LOGIN_METHODS = '["StartAuthorization", "GetLogin", "CompleteAuthorization"]'


def policy(b_labels: str = '["crm"]') -> str:
    return f"""
[identities."{A}"]
methods = {LOGIN_METHODS}
labels = ["crm"]

[identities."{B}"]
methods = {LOGIN_METHODS}
labels = {b_labels}
"""


@dataclass
class Served:
    harness: Harness
    logins: LoginService
    client: FakeClient
    sink: FakeSink

    def stub(self, identity: str) -> Any:
        return self.harness.stub_for(identity)

    def set_policy(self, text: str) -> None:
        self.harness.policy_path.write_text(text)
        assert self.harness.running.policy.reload()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = SoftKeyStore()
    store.generate("client", b"\x01")
    signer = store.signer("client")
    clock = FakeClock()
    client = FakeClient()
    sink = FakeSink(clock=clock)
    logins = LoginService(
        client, client_config(signer.kid), signer, sink, clock, settings=LoginSettings(BASE_URL)
    )
    async with started_harness(tmp_path, policy_text=policy(), login_service=logins) as harness:
        yield Served(harness, logins, client, sink)


def state_of(authorization_url: str) -> str:
    return parse_qs(urlsplit(authorization_url).query)["state"][0]


async def _not_found(call: Any) -> str:
    err = await fails(call)
    assert err.code() is grpc.StatusCode.NOT_FOUND
    details: str = err.details()
    return details


async def test_c03_get_login_of_another_caller_is_not_found_like_an_unknown_id(
    served: Served,
) -> None:
    a, b = served.stub(A), served.stub(B)
    started = await b.StartAuthorization(pb.StartAuthorizationRequest(label="crm"))
    other = await _not_found(a.GetLogin(pb.GetLoginRequest(login_id=started.login_id)))
    unknown = await _not_found(a.GetLogin(pb.GetLoginRequest(login_id="no-such-login")))
    assert other == unknown
    own = (await b.GetLogin(pb.GetLoginRequest(login_id=started.login_id))).login
    assert own.state == pb.LOGIN_STATE_PENDING
    assert own.authorization_url == started.authorization_url


@pytest.mark.parametrize(
    "response",
    [
        {"code": "c-a", "iss": ISSUER},
        {"error": "access_denied", "iss": ISSUER},
        {"code": "c-a", "iss": "https://evil.example"},
        {"code": "c-a"},
    ],
    ids=["valid", "as-error", "foreign-iss", "no-iss"],
)
async def test_c03_complete_with_another_callers_state_is_not_found_and_changes_nothing(
    served: Served, response: dict[str, str]
) -> None:
    a, b = served.stub(A), served.stub(B)
    started = await b.StartAuthorization(pb.StartAuthorizationRequest(label="crm"))
    state = state_of(started.authorization_url)
    other = await _not_found(
        a.CompleteAuthorization(pb.CompleteAuthorizationRequest(state=state, **response))
    )
    unknown = await _not_found(
        a.CompleteAuthorization(pb.CompleteAuthorizationRequest(state="x" * 43, **response))
    )
    assert other == unknown
    assert served.client.calls == [] and served.sink.grants == []
    still = (await b.GetLogin(pb.GetLoginRequest(login_id=started.login_id))).login
    assert still.state == pb.LOGIN_STATE_PENDING
    assert still.authorization_url == started.authorization_url
    done = await b.CompleteAuthorization(
        pb.CompleteAuthorizationRequest(code="c-b", state=state, iss=ISSUER)
    )
    assert done.login.state == pb.LOGIN_STATE_COMPLETED
    assert done.login.login_id == started.login_id
    assert done.login.grant_id == "grant-1"
    assert [c.code for c in served.client.calls] == ["c-b"]


async def test_c01_rejected_response_from_the_owner_leaves_the_login_pending(
    served: Served,
) -> None:
    b = served.stub(B)
    started = await b.StartAuthorization(pb.StartAuthorizationRequest(label="crm"))
    state = state_of(started.authorization_url)
    err = await fails(
        b.CompleteAuthorization(
            pb.CompleteAuthorizationRequest(code="c", state=state, iss="https://evil.example")
        )
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    still = (await b.GetLogin(pb.GetLoginRequest(login_id=started.login_id))).login
    assert still.state == pb.LOGIN_STATE_PENDING
    assert still.authorization_url == started.authorization_url
    done = await b.CompleteAuthorization(
        pb.CompleteAuthorizationRequest(code="c", state=state, iss=ISSUER)
    )
    assert done.login.state == pb.LOGIN_STATE_COMPLETED


async def test_owner_completes_without_iss_when_the_as_sends_none(served: Served) -> None:
    """proto3 cannot tell an absent iss from "": an unset iss is "not sent" (DOME v2)."""
    served.client.md = metadata(iss_supported=False)
    b = served.stub(B)
    started = await b.StartAuthorization(pb.StartAuthorizationRequest(label="crm"))
    done = await b.CompleteAuthorization(
        pb.CompleteAuthorizationRequest(code="c", state=state_of(started.authorization_url))
    )
    assert done.login.state == pb.LOGIN_STATE_COMPLETED


async def test_e05_label_policy_applies_to_logins_as_to_grants(served: Served) -> None:
    a, b = served.stub(A), served.stub(B)
    err = await fails(b.StartAuthorization(pb.StartAuthorizationRequest(label="erp")))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    started = await b.StartAuthorization(pb.StartAuthorizationRequest(label="crm"))
    state = state_of(started.authorization_url)
    served.set_policy(policy(b_labels='["erp"]'))  # B may no longer hold crm grants
    for call in (
        b.GetLogin(pb.GetLoginRequest(login_id=started.login_id)),
        b.CompleteAuthorization(pb.CompleteAuthorizationRequest(code="c", state=state, iss=ISSUER)),
    ):
        assert (await fails(call)).code() is grpc.StatusCode.PERMISSION_DENIED
    assert served.client.calls == []
    # A may hold crm grants, but B's login stays B's.
    await _not_found(a.GetLogin(pb.GetLoginRequest(login_id=started.login_id)))
    served.set_policy(policy())
    still = (await b.GetLogin(pb.GetLoginRequest(login_id=started.login_id))).login
    assert still.state == pb.LOGIN_STATE_PENDING
    done = await b.CompleteAuthorization(
        pb.CompleteAuthorizationRequest(code="c", state=state, iss=ISSUER)
    )
    assert done.login.state == pb.LOGIN_STATE_COMPLETED
    assert served.sink.grants[0][1] == "crm"
