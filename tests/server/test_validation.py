"""Validation of caller input (TEST-CATALOGUE F rows): unit table and end to end."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from broker.errors import InvalidArgument
from broker.server import validation
from broker.server.gen.broker.v1 import broker_pb2 as pb
from tests.server.conftest import ADMIN, Harness

BAD_IDS = ["", "x" * 129, "g 1", "g/1", "g\x001", "ü", "g.1"]


@pytest.mark.parametrize("value", BAD_IDS)
def test_bad_ids_are_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validation.grant_id(value)
    assert info.value.message.startswith("grant_id ")
    with pytest.raises(InvalidArgument):
        validation.login_id(value)


def test_good_ids_and_labels_pass() -> None:
    assert validation.grant_id("A-z_09" + "x" * 122) == "A-z_09" + "x" * 122
    assert validation.label("crm.prod-1") == "crm.prod-1"
    assert validation.label_filter("") is None


@pytest.mark.parametrize("value", ["", "x" * 65, "a b", "a/b"])
def test_bad_labels_are_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument):
        validation.label(value)


@pytest.mark.parametrize(
    ("seconds", "nanos", "fragment"),
    [
        (-1, 0, "negative"),
        (0, -1, "negative"),
        (3601, 0, "at most 3600"),
        (3600, 1, "at most 3600"),
        (1, -5, "same sign"),
        (0, 1_000_000_000, "nanos"),
    ],
)
def test_bad_min_ttl_is_invalid_argument(seconds: int, nanos: int, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validation.min_ttl(seconds, nanos)
    assert fragment in info.value.message


def test_min_ttl_in_bounds() -> None:
    assert validation.min_ttl(0, 0) == 0.0
    assert validation.min_ttl(30, 500_000_000) == 30.5
    assert validation.min_ttl(3600, 0) == 3600.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"code": "c", "state": "", "iss": "", "error": ""}, "state is required"),
        ({"code": "", "state": "s", "iss": "", "error": ""}, "code is required"),
        ({"code": "c" * 2049, "state": "s", "iss": "", "error": ""}, "code is longer"),
        ({"code": "c", "state": "s" * 513, "iss": "", "error": ""}, "state is longer"),
        ({"code": "c d", "state": "s", "iss": "", "error": ""}, "code must consist"),
        ({"code": "c", "state": "s", "iss": "https://a b", "error": ""}, "iss must"),
        ({"code": "c", "state": "s", "iss": "", "error": "access_denied"}, "mutually exclusive"),
        ({"code": "", "state": "s", "iss": "", "error": 'bad"quote'}, "error must"),
    ],
)
def test_bad_authorization_response_is_invalid_argument(
    kwargs: dict[str, str], fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        validation.authorization_response(**kwargs)
    assert fragment in info.value.message
    # the message never echoes the (secret) value
    assert "c" * 20 not in info.value.message


def test_good_authorization_responses() -> None:
    assert validation.authorization_response(
        code="abc", state="st", iss="https://verifier.example", error=""
    ) == ("abc", "st", "https://verifier.example", None)
    assert validation.authorization_response(
        code="", state="st", iss="", error="access_denied"
    ) == ("", "st", "", "access_denied")


E2E_CASES: list[tuple[str, Any]] = [
    ("GetAccessToken", pb.GetAccessTokenRequest(grant_id="")),
    ("GetAccessToken", pb.GetAccessTokenRequest(grant_id="x" * 129)),
    ("GetAccessToken", pb.GetAccessTokenRequest(grant_id="../etc")),
    ("GetAccessToken", pb.GetAccessTokenRequest(grant_id="g-1", min_ttl=Duration(seconds=-5))),
    ("GetAccessToken", pb.GetAccessTokenRequest(grant_id="g-1", min_ttl=Duration(seconds=7200))),
    ("GetGrant", pb.GetGrantRequest(grant_id="g 1")),
    ("RevokeGrant", pb.RevokeGrantRequest(grant_id="")),
    ("ListGrants", pb.ListGrantsRequest(label="no spaces")),
    ("StartAuthorization", pb.StartAuthorizationRequest(label="")),
    ("GetLogin", pb.GetLoginRequest(login_id="")),
    ("CompleteAuthorization", pb.CompleteAuthorizationRequest(code="c", state="")),
]


@pytest.mark.parametrize(("method", "request_"), E2E_CASES)
async def test_bad_requests_are_invalid_argument_end_to_end(
    harness: Harness, method: str, request_: Any
) -> None:
    s = harness.stub_for(ADMIN)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(s, method)(request_)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details()
    assert harness.broker.calls == []
    assert harness.logins.completed == []
