"""The servicer memoises caller identities per certificate: the memo never widens access."""

from __future__ import annotations

import grpc

from broker.server.gen.broker.v1 import broker_pb2 as pb
from tests.server.conftest import APP, Harness, stub
from tests.server.rpc import code_of


def _get(s: object) -> object:
    return s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))  # type: ignore[attr-defined]


async def test_e05_each_certificate_is_named_by_its_own_properties(harness: Harness) -> None:
    app = harness.stub_for(APP)
    stranger = harness.stub_for("spiffe://corp.example/stranger")
    two_sans = stub(harness.channel(harness.ca.issue(uris=(APP, "spiffe://corp.example/x"))))
    for _ in range(2):  # second round: every identity (or failure) seen before
        assert await code_of(_get(app)) is grpc.StatusCode.OK
        assert await code_of(_get(stranger)) is grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(_get(two_sans)) is grpc.StatusCode.PERMISSION_DENIED
    assert len(harness.broker.calls) == 2


async def test_e04_serial_denied_after_its_identity_was_memoised(harness: Harness) -> None:
    client = harness.ca.issue(uris=(APP,))
    s = stub(harness.channel(client))
    assert await code_of(_get(s)) is grpc.StatusCode.OK
    harness.policy_path.write_text(
        harness.policy_path.read_text().replace(
            "[deny]\n", f'[deny]\nserials = ["{hex(client.serial)}"]\n'
        )
    )
    assert harness.running.policy.reload()
    assert await code_of(_get(s)) is grpc.StatusCode.PERMISSION_DENIED
    assert len(harness.broker.calls) == 1
