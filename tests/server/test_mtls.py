"""The negative mTLS matrix and caller identity, against a real server (TEST-CATALOGUE E)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest

from broker.server.gen.broker.v1 import broker_pb2 as pb
from tests.server.conftest import APP, Harness, stub
from tests.server.pki import NOW, Ca
from tests.server.rpc import fails


async def _code(call: Any) -> grpc.StatusCode:
    code: grpc.StatusCode = (await fails(call)).code()
    return code


async def _token_ok(h: Harness) -> None:
    reply = await h.stub_for(APP).GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
    assert reply.token.grant_id == "g-1"


async def test_valid_uri_san_client_gets_a_token(harness: Harness) -> None:
    reply = await harness.stub_for(APP).GetAccessToken(
        pb.GetAccessTokenRequest(grant_id="g-1"), timeout=10
    )
    assert reply.token.access_token == "at-g-1-0"
    assert reply.token.token_type == "Bearer"
    assert reply.token.expires_at.seconds == 1_800_000_300
    assert harness.broker.calls == [("get_access_token", "g-1", 0.0)]


async def test_e01_client_without_certificate_fails_the_handshake(harness: Harness) -> None:
    s = stub(harness.channel(None))
    code = await _code(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"), timeout=10))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert harness.broker.calls == []
    await _token_ok(harness)


async def test_e02_client_cert_from_another_ca_fails_the_handshake(harness: Harness) -> None:
    foreign = Ca("other-trust-domain").issue(uris=(APP,))
    s = stub(harness.channel(foreign))
    code = await _code(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"), timeout=10))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert harness.broker.calls == []
    await _token_ok(harness)


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (NOW - dt.timedelta(days=2), NOW - dt.timedelta(days=1)),
        (NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=2)),
    ],
    ids=["expired", "not-yet-valid"],
)
async def test_e03_expired_or_not_yet_valid_client_cert_is_rejected(
    harness: Harness, not_before: dt.datetime, not_after: dt.datetime
) -> None:
    client = harness.ca.issue(uris=(APP,), not_before=not_before, not_after=not_after)
    s = stub(harness.channel(client))
    code = await _code(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"), timeout=10))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert harness.broker.calls == []


async def test_e04_denylisted_identity_is_permission_denied(harness: Harness) -> None:
    s = harness.stub_for("spiffe://corp.example/retired")
    code = await _code(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert harness.broker.calls == []


async def test_e04_denylisted_serial_is_permission_denied(harness: Harness) -> None:
    client = harness.ca.issue(uris=(APP,))
    harness.policy_path.write_text(
        harness.policy_path.read_text().replace(
            "[deny]\n", f'[deny]\nserials = ["{hex(client.serial)}"]\n'
        )
    )
    assert harness.running.policy.reload()
    s = stub(harness.channel(client))
    code = await _code(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert harness.broker.calls == []
    await _token_ok(harness)  # another certificate of the same identity still works


async def test_e05_valid_cert_not_in_policy_is_permission_denied_without_inventory(
    harness: Harness,
) -> None:
    s = harness.stub_for("spiffe://corp.example/stranger")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "permission denied"
    assert harness.broker.calls == []


async def test_e05_known_identity_other_grant_or_method_is_denied(harness: Harness) -> None:
    s = harness.stub_for(APP)
    assert (
        await _code(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-2")))
        is grpc.StatusCode.PERMISSION_DENIED
    )
    # a grant that does not exist is denied the same way (no existence oracle)
    assert (
        await _code(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-nope")))
        is grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await _code(s.RevokeGrant(pb.RevokeGrantRequest(grant_id="g-1")))
        is grpc.StatusCode.PERMISSION_DENIED
    )
    assert harness.broker.calls == []
    assert harness.broker.revoked == []


async def test_cn_only_certificate_is_denied_without_the_cn_opt_in(harness: Harness) -> None:
    # The policy allows "cn:cn-only-client", but CN identities are off by default.
    s = harness.stub_for(cn="cn-only-client")
    code = await _code(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert harness.broker.calls == []


async def test_uri_san_wins_over_cn(harness: Harness) -> None:
    # The CN would be allowed under the CN opt-in, the URI SAN is not: the URI SAN is the identity.
    client = harness.ca.issue(cn="cn-only-client", uris=("spiffe://corp.example/stranger",))
    s = stub(harness.channel(client))
    code = await _code(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    client = harness.ca.issue(cn="stranger", uris=(APP,))
    reply = await stub(harness.channel(client)).GetAccessToken(
        pb.GetAccessTokenRequest(grant_id="g-1")
    )
    assert reply.token.grant_id == "g-1"


async def test_label_rule_allows_grants_by_label_only(harness: Harness) -> None:
    s = harness.stub_for("spiffe://corp.example/labeller")
    reply = await s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))  # label crm
    assert reply.token.grant_id == "g-1"
    code = await _code(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-2")))  # erp
    assert code is grpc.StatusCode.PERMISSION_DENIED
    listed = await s.ListGrants(pb.ListGrantsRequest())
    assert [g.grant_id for g in listed.grants] == ["g-1"]
    assert listed.grants[0].status == pb.GRANT_STATUS_ACTIVE
    started = await s.StartAuthorization(pb.StartAuthorizationRequest(label="crm"))
    assert started.login_id == "login-1"
    code = await _code(s.StartAuthorization(pb.StartAuthorizationRequest(label="erp")))
    assert code is grpc.StatusCode.PERMISSION_DENIED
