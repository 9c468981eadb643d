"""ListGrants pagination (AIP-158): page size bounds, opaque validated page tokens, keyset order,
the caller's policy applied before the page is cut; units and through the real server."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest

from broker import errors as e
from broker.server import paging
from broker.server.gen.broker.v1 import broker_pb2 as pb
from tests.server.conftest import ADMIN, LABELLER, Harness
from tests.server.fakes import make_grant


@pytest.mark.parametrize(
    ("requested", "size"),
    [(0, paging.DEFAULT_PAGE_SIZE), (1, 1), (7, 7), (1000, 1000), (1001, 1000), (2**31 - 1, 1000)],
)
def test_page_size_default_and_maximum(requested: int, size: int) -> None:
    assert paging.page_size(requested) == size


def test_negative_page_size_is_invalid() -> None:
    with pytest.raises(e.InvalidArgument):
        paging.page_size(-1)


def test_token_round_trip_is_opaque_and_bound_to_the_label() -> None:
    token = paging.encode_token("crm", "g-41")
    assert "g-41" not in token and "=" not in token
    assert paging.decode_token(token, "crm") == "g-41"
    assert paging.decode_token(paging.encode_token(None, "g-1"), None) == "g-1"
    assert paging.decode_token("", "crm") is None
    with pytest.raises(e.InvalidArgument):
        paging.decode_token(token, None)
    with pytest.raises(e.InvalidArgument):
        paging.decode_token(token, "erp")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        "!!!",
        "not base64 at all",
        "A",  # not a whole base64 quantum
        _b64(b"v1\n\ng-1") + "==",  # padding variant of a valid token
        _b64(b"v2\n\ng-1"),
        _b64(b"v1\ng-1"),
        _b64(b"v1\n\n\ng-1"),
        _b64(b"v1\n\nnot a grant id"),
        _b64(b"v1\n\n"),
        _b64(b"v1\n\n" + b"g" * 129),
        _b64(b"v1\n\n\xff\xfe"),
        "A" * (paging.MAX_PAGE_TOKEN_CHARS + 4),
    ],
)
def test_malformed_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(e.InvalidArgument) as info:
        paging.decode_token(token, None)
    assert token not in info.value.message


def test_cut_page_is_keyset_ordered() -> None:
    ids = ["g-3", "g-1", "g-5", "g-2", "g-4"]
    first = paging.cut_page(ids, str, after=None, size=2)
    assert (list(first.items), first.next_after) == (["g-1", "g-2"], "g-2")
    # an id inserted before the cursor and one removed after it change nothing already seen
    second = paging.cut_page([*ids, "g-0"], str, after="g-2", size=2)
    assert (list(second.items), second.next_after) == (["g-3", "g-4"], "g-4")
    last = paging.cut_page(ids, str, after="g-4", size=2)
    assert (list(last.items), last.next_after) == (["g-5"], None)
    exact = paging.cut_page(ids, str, after=None, size=5)
    assert exact.next_after is None
    assert paging.cut_page([], str, after=None, size=3).items == []


async def _all_pages(stub: Any, **request: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        reply = await stub.ListGrants(pb.ListGrantsRequest(page_token=token, **request))
        pages.append([g.grant_id for g in reply.grants])
        token = reply.next_page_token
        if not token:
            return pages
        assert len(pages) < 100


def _add(harness: Harness, *grants: tuple[str, str]) -> None:
    for grant_id, label in grants:
        harness.broker.grants[grant_id] = make_grant(grant_id, label)


async def test_pages_in_grant_id_order_with_a_next_page_token(harness: Harness) -> None:
    _add(harness, *((f"g-{n:02d}", "crm" if n % 2 else "erp") for n in range(3, 12)))
    s = harness.stub_for(ADMIN)
    pages = await _all_pages(s, page_size=4)
    assert pages == [
        ["g-03", "g-04", "g-05", "g-06"],
        ["g-07", "g-08", "g-09", "g-1"],
        ["g-10", "g-11", "g-2"],
    ]
    assert await _all_pages(s, page_size=4, label="erp") == [
        ["g-04", "g-06", "g-08", "g-10"],
        ["g-2"],
    ]
    whole = await s.ListGrants(pb.ListGrantsRequest())
    assert len(whole.grants) == 11
    assert whole.next_page_token == ""


async def test_default_page_size_applies_when_unset(harness: Harness) -> None:
    _add(harness, *((f"g-x{n:03d}", "crm") for n in range(paging.DEFAULT_PAGE_SIZE + 1)))
    reply = await harness.stub_for(ADMIN).ListGrants(pb.ListGrantsRequest())
    assert len(reply.grants) == paging.DEFAULT_PAGE_SIZE
    assert reply.next_page_token


async def test_policy_filters_before_the_page_is_cut(harness: Harness) -> None:
    """LABELLER sees only crm grants: its pages are full pages of crm grants, never erp ones."""
    _add(harness, *((f"g-{n:02d}", "crm" if n % 3 == 0 else "erp") for n in range(3, 20)))
    pages = await _all_pages(harness.stub_for(LABELLER), page_size=2)
    assert pages == [["g-03", "g-06"], ["g-09", "g-1"], ["g-12", "g-15"], ["g-18"]]


async def test_grants_created_or_removed_between_pages(harness: Harness) -> None:
    _add(harness, *((f"g-{n}", "crm") for n in range(3, 7)))
    s = harness.stub_for(ADMIN)
    first = await s.ListGrants(pb.ListGrantsRequest(page_size=3))
    assert [g.grant_id for g in first.grants] == ["g-1", "g-2", "g-3"]
    del harness.broker.grants["g-4"]
    _add(harness, ("g-0", "crm"), ("g-5a", "crm"))
    second = await s.ListGrants(pb.ListGrantsRequest(page_size=3, page_token=first.next_page_token))
    assert [g.grant_id for g in second.grants] == ["g-5", "g-5a", "g-6"]
    assert second.next_page_token == ""


@pytest.mark.parametrize(
    "request_fields",
    [
        {"page_size": -1},
        {"page_token": "garbage!"},
        {"page_token": paging.encode_token("crm", "g-1")},  # made for another label
    ],
)
async def test_invalid_paging_is_invalid_argument_before_the_store(
    harness: Harness, request_fields: dict[str, Any]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.stub_for(ADMIN).ListGrants(pb.ListGrantsRequest(**request_fields))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "garbage" not in (info.value.details() or "")
    assert harness.broker.calls == []
