"""WebServer: uvicorn started and stopped inside the running event loop."""

from __future__ import annotations

import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from broker.errors import ConfigError
from broker.web.server import WebServer


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


APP = Starlette(routes=[Route("/healthz", _ok)])


async def test_start_serve_stop_on_an_ephemeral_port() -> None:
    server = WebServer(APP, host="127.0.0.1", port=0)
    with pytest.raises(ConfigError):
        _ = server.port
    await server.start()
    try:
        assert server.port > 0
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"{server.base_url}/healthz")
        assert resp.status_code == 200 and resp.text == "ok"
        assert "server" not in resp.headers
        with pytest.raises(ConfigError):
            await server.start()
    finally:
        await server.stop()
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{server.port}/healthz")
    await server.stop()  # stopping twice is harmless


async def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = WebServer(APP, host="127.0.0.1", port=port)
        with pytest.raises(ConfigError):
            await server.start()
