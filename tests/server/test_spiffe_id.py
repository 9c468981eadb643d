"""The SPIFFE ID grammar, table-driven (SPIFFE-ID spec section 2; X509-SVID section 3.1)."""

from __future__ import annotations

import pytest

from broker.errors import MalformedIdentity
from broker.server import spiffe_id
from broker.server.spiffe_id import SpiffeId

TD_255 = "a" * 255
LONGEST = "spiffe://td/" + "a" * (2048 - len("spiffe://td/"))

VALID = [
    ("spiffe://example.org/workload", SpiffeId("example.org", "/workload")),
    ("spiffe://example.org/ns/prod/sa/web-fe", SpiffeId("example.org", "/ns/prod/sa/web-fe")),
    ("spiffe://td-1_x.y/A.b_c-D/9", SpiffeId("td-1_x.y", "/A.b_c-D/9")),
    ("spiffe://example.org/..a/.b./...", SpiffeId("example.org", "/..a/.b./...")),
    ("spiffe://example.org", SpiffeId("example.org", "")),
    (f"spiffe://{TD_255}/x", SpiffeId(TD_255, "/x")),
    (LONGEST, SpiffeId("td", LONGEST[len("spiffe://td") :])),
]

INVALID = [
    # scheme
    ("", "not a spiffe:// URI"),
    ("example.org/workload", "not a spiffe:// URI"),
    ("https://example.org/workload", "not a spiffe:// URI"),
    ("SPIFFE://example.org/workload", "not a spiffe:// URI"),
    ("spiffe:example.org/workload", "not a spiffe:// URI"),
    ("spiffe:/example.org/workload", "not a spiffe:// URI"),
    # trust domain
    ("spiffe://", "empty trust domain"),
    ("spiffe:///workload", "empty trust domain"),
    ("spiffe://Example.org/workload", "[a-z0-9._-]"),
    ("spiffe://exa mple.org/workload", "[a-z0-9._-]"),
    ("spiffe://exam+ple.org/workload", "[a-z0-9._-]"),
    ("spiffe://example.org:8443/workload", "has a port"),
    ("spiffe://example.org:/workload", "has a port"),
    ("spiffe://user@example.org/workload", "has userinfo"),
    ("spiffe://user:pw@example.org/workload", "has userinfo"),
    ("spiffe://[::1]/workload", "has a port"),
    (f"spiffe://{'a' * 256}/x", "longer than 255"),
    # query, fragment, percent-encoding
    ("spiffe://example.org/workload?x=1", "has a query"),
    ("spiffe://example.org?x=1", "has a query"),
    ("spiffe://example.org/workload#frag", "has a fragment"),
    ("spiffe://example.org/work%6Coad", "percent-encoding"),
    ("spiffe://ex%61mple.org/workload", "percent-encoding"),
    # path
    ("spiffe://example.org/", "trailing slash"),
    ("spiffe://example.org/workload/", "trailing slash"),
    ("spiffe://example.org//workload", "empty segment"),
    ("spiffe://example.org/a//b", "empty segment"),
    ("spiffe://example.org/.", "'.' or '..'"),
    ("spiffe://example.org/a/./b", "'.' or '..'"),
    ("spiffe://example.org/..", "'.' or '..'"),
    ("spiffe://example.org/a/../b", "'.' or '..'"),
    ("spiffe://example.org/a b", "[A-Za-z0-9._-]"),
    ("spiffe://example.org/a+b", "[A-Za-z0-9._-]"),
    ("spiffe://example.org/a:b", "[A-Za-z0-9._-]"),
    ("spiffe://example.org/a@b", "[A-Za-z0-9._-]"),
    ("spiffe://example.org/a\\b", "[A-Za-z0-9._-]"),
    ("spiffe://example.org/\u00e9", "not ASCII"),
    ("spiffe://example.org/a\x00b", "[A-Za-z0-9._-]"),
    # length
    (LONGEST + "a", "longer than 2048 bytes"),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[v[0][:40] for v in VALID])
def test_valid_spiffe_ids_parse_and_round_trip(text: str, expected: SpiffeId) -> None:
    parsed = spiffe_id.parse(text)
    assert parsed == expected
    assert str(parsed) == text


@pytest.mark.parametrize(("text", "reason"), INVALID, ids=[repr(i[0][:40]) for i in INVALID])
def test_invalid_spiffe_ids_are_malformed_identities(text: str, reason: str) -> None:
    with pytest.raises(MalformedIdentity) as info:
        spiffe_id.parse(text)
    assert reason in info.value.message
    assert info.value.reason == "malformed_identity"
    assert info.value.retryable is False
    if len(text) > 12:
        assert text not in info.value.message  # the reason never echoes the input


def test_path_is_case_sensitive() -> None:
    assert spiffe_id.parse("spiffe://td/App") != spiffe_id.parse("spiffe://td/app")


def test_workload_id_needs_a_non_root_path() -> None:
    assert spiffe_id.parse_workload("spiffe://td/w").path == "/w"
    with pytest.raises(MalformedIdentity, match="empty path"):
        spiffe_id.parse_workload("spiffe://td")


@pytest.mark.parametrize(
    ("cn", "name"),
    [
        ("orders", "cn:orders"),
        ("orders service", "cn:orders service"),
        ("x" * 64, "cn:" + "x" * 64),
    ],
)
def test_cn_identity_lives_in_its_own_namespace(cn: str, name: str) -> None:
    assert spiffe_id.cn_identity(cn) == name
    spiffe_id.check_policy_name(name)


@pytest.mark.parametrize("cn", ["", " orders", "orders ", "or\nders", "ord\u00e9rs", "x" * 65])
def test_malformed_cn_is_refused(cn: str) -> None:
    with pytest.raises(MalformedIdentity):
        spiffe_id.cn_identity(cn)


@pytest.mark.parametrize(
    "name",
    ["orders", "cn:", "cn: x", "spiffe://td", "spiffe://td/a/", "https://td/a", "CN:orders"],
)
def test_policy_names_are_workload_ids_or_cn_namespace(name: str) -> None:
    with pytest.raises(MalformedIdentity):
        spiffe_id.check_policy_name(name)
