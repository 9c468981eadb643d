"""Bounded HTTP helpers: size limits after decompression, redirects, Retry-After parsing."""

from __future__ import annotations

import gzip

import httpx
import pytest

from broker.errors import AuthServerUnavailable, UnexpectedResponse
from broker.oauth import http as bounded


async def test_a04_gzip_bomb_is_cut_on_decoded_size() -> None:
    bomb = gzip.compress(b"0" * 10_000_000)
    assert len(bomb) < 50_000

    def handler(_r: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=bomb, headers={"content-encoding": "gzip"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(UnexpectedResponse) as info:
            await bounded.request(
                http, "GET", "https://as.example/x", timeout=5, max_bytes=1_000_000
            )
    assert info.value.status_code == 200


async def test_redirect_is_returned_not_followed() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"location": "https://other.example/"})

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), follow_redirects=True
    ) as http:
        resp = await bounded.request(http, "GET", "https://as.example/x", timeout=5, max_bytes=1000)
    assert resp.status_code == 302 and seen == ["https://as.example/x"]


async def test_transport_error_is_retryable_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("reset", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(AuthServerUnavailable) as info:
            await bounded.request(http, "GET", "https://as.example/x", timeout=5, max_bytes=1000)
    assert info.value.retryable


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        (" 0 ", 0.0),
        ("Fri, 15 Jan 2027 08:00:20 GMT", 20.0),
        ("Fri, 15 Jan 2027 07:59:00 GMT", 0.0),  # in the past
        ("-5", None),
        ("soon", None),
        ("1.5", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = 1_800_000_000.0  # Fri, 15 Jan 2027 08:00:00 GMT
    assert bounded.parse_retry_after(value, now=now) == expected
