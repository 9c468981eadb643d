"""Caller identity at the gRPC edge against a real mTLS server (TEST-CATALOGUE E05).

The identity is the leaf's one URI SAN and must be a valid SPIFFE ID (SPIFFE X509-SVID
sections 2, 4-5); a CN names the caller only when the operator opted in, and then only as
``cn:<CN>``. Every refused certificate is PERMISSION_DENIED, logged with reason
``malformed_identity`` (not ``not_in_policy``), and never reaches the token core.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from broker.server.gen.broker.v1 import broker_pb2 as pb
from tests.server.conftest import APP, POLICY, Harness, started_harness, stub
from tests.server.pki import Issued
from tests.server.rpc import code_of

LOGGERS = ("broker.server.identity", "broker.server.policy")


def _key_usage(*, key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


async def _get(h: Harness, client: Issued) -> grpc.StatusCode:
    s = stub(h.channel(client))
    return await code_of(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"), timeout=10))


@pytest.fixture
async def cn_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    policy = POLICY + '\n[identities."cn:orders"]\nmethods = ["GetAccessToken"]\ngrants = ["g-1"]\n'
    async with started_harness(tmp_path, policy_text=policy, cn_identities=True) as h:
        yield h


# Ca.issue kwargs of each certificate that must be refused as a malformed identity.
REFUSED: dict[str, dict[str, Any]] = {
    "cn-only equal to an allowed SPIFFE ID": {"cn": APP},
    "allowed SPIFFE ID as a DNS SAN": {"cn": "app", "dns": (APP,)},
    "cA:true leaf": {"uris": (APP,), "is_ca": True},
    "keyCertSign leaf": {"uris": (APP,), "key_usage": _key_usage(key_cert_sign=True)},
    "cRLSign leaf": {"uris": (APP,), "key_usage": _key_usage(crl_sign=True)},
    "https URI SAN": {"uris": ("https://corp.example/app",)},
    "two URI SANs": {"uris": (APP, "spiffe://corp.example/other")},
    "SPIFFE ID with a trailing slash": {"uris": (APP + "/",)},
    "SPIFFE ID with an upper-case trust domain": {"uris": ("spiffe://CORP.example/app",)},
    "SPIFFE ID with a dot-dot segment": {"uris": ("spiffe://corp.example/x/../app",)},
    "SPIFFE ID of the bare trust domain": {"uris": ("spiffe://corp.example",)},
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_e05_malformed_identity_is_denied_before_the_policy(
    harness: Harness, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    client = harness.ca.issue(**REFUSED[case])
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the second call is served from the identity cache: still refused
            assert await _get(harness, client) is grpc.StatusCode.PERMISSION_DENIED
    assert harness.broker.calls == []
    denials = [r.getMessage() for r in caplog.records if r.name in LOGGERS]
    assert len(denials) == 2
    assert all("reason=malformed_identity" in m for m in denials), denials
    assert not any("not_in_policy" in m for m in denials)
    assert not any("BEGIN CERTIFICATE" in m for m in denials)


async def test_e05_valid_spiffe_id_is_allowed_and_unknown_one_is_not_in_policy(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # DNS SANs and a CN beside the one URI SAN are allowed (X509-SVID section 2), and ignored.
    ok = harness.ca.issue(cn="whatever", uris=(APP,), dns=("app.corp.example",))
    assert await _get(harness, ok) is grpc.StatusCode.OK
    with caplog.at_level(logging.WARNING):
        stranger = harness.ca.issue(uris=("spiffe://corp.example/stranger",))
        assert await _get(harness, stranger) is grpc.StatusCode.PERMISSION_DENIED
    denials = [r.getMessage() for r in caplog.records if r.name in LOGGERS]
    assert len(denials) == 1
    assert "reason=not_in_policy" in denials[0]
    assert "identity=spiffe://corp.example/stranger" in denials[0]
    assert len(harness.broker.calls) == 1


async def test_opt_in_cn_mode_grants_the_cn_namespace_only(cn_harness: Harness) -> None:
    h = cn_harness
    assert await _get(h, h.ca.issue(cn="orders")) is grpc.StatusCode.OK
    # the CN names "cn:<CN>", never a SPIFFE ID nor a pre-namespaced name
    assert await _get(h, h.ca.issue(cn=APP)) is grpc.StatusCode.PERMISSION_DENIED
    assert await _get(h, h.ca.issue(cn="cn:orders")) is grpc.StatusCode.PERMISSION_DENIED
    # a URI SAN still wins, and still has to be a valid SPIFFE ID (no fallback to the CN)
    assert await _get(h, h.ca.issue(cn="orders", uris=(APP,))) is grpc.StatusCode.OK
    https = h.ca.issue(cn="orders", uris=("https://corp.example/orders",))
    assert await _get(h, https) is grpc.StatusCode.PERMISSION_DENIED
    # CA leaves are refused in CN mode too; DNS SANs are never identities
    assert await _get(h, h.ca.issue(cn="orders", is_ca=True)) is grpc.StatusCode.PERMISSION_DENIED
    assert await _get(h, h.ca.issue(dns=("orders",))) is grpc.StatusCode.PERMISSION_DENIED
    assert len(h.broker.calls) == 2
