"""Doctor network failures name the request (method and URL) and the cause in words."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from broker.doctor.net import network_failed
from broker.doctor.result import Status
from broker.errors import AuthServerUnavailable
from broker.oauth import http as bounded
from devtools.pki import Ca

Request = Callable[[str], Awaitable[None]]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def untrusted_tls_server(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 whose certificate chains to a CA nobody trusts."""
    ca = Ca("untrusted test CA")
    issued = ca.issue(cn="localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def _failure(url: str, transport: httpx.AsyncBaseTransport | None = None) -> BaseException:
    async with httpx.AsyncClient(transport=transport) as client:
        try:
            await bounded.request(client, "GET", url, timeout=10, max_bytes=4096)
        except AuthServerUnavailable as exc:
            return exc
    raise AssertionError("the request did not fail")


def _raising(exc: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.MockTransport(handler)


def _dns_failure() -> Exception:
    try:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    except socket.gaierror as cause:
        try:
            raise httpx.ConnectError("[Errno -2] Name or service not known") from cause
        except httpx.ConnectError as exc:
            return exc


async def test_connection_refused_names_the_url() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/.well-known/openid-configuration"
    result = network_failed("as.discovery", await _failure(url), "GET", url)
    assert result.status is Status.FAIL
    assert result.detail == f"GET {url}: connection refused [as_unavailable]"


async def test_untrusted_certificate_is_named(untrusted_tls_server: str) -> None:
    url = untrusted_tls_server + "/.well-known/openid-configuration"
    result = network_failed("as.discovery", await _failure(url), "GET", url)
    assert result.detail.startswith(f"GET {url}: TLS certificate verification failed (")
    assert "[oauth].ca_file" in result.detail and result.detail.endswith("[as_unavailable]")


@pytest.mark.parametrize(
    ("raised", "words"),
    [
        (_dns_failure(), "host name not resolved"),
        (httpx.ReadTimeout("read timed out"), "no answer in time ([oauth].http_timeout)"),
    ],
)
async def test_transport_causes_in_words(raised: Exception, words: str) -> None:
    url = "https://verifier.example.org/oidc/did/did:key:zDn"
    exc = await _failure(url, _raising(raised))
    result = network_failed("as.dome_did", exc, "GET", url)
    assert result.detail == f"GET {url}: {words} [as_unavailable]"


def test_without_a_transport_cause_the_broker_message_follows_the_url() -> None:
    exc = AuthServerUnavailable("the AS answered HTTP 503")
    result = network_failed("as.jwks", exc, "GET", "https://as.example/jwks")
    assert result.detail == "GET https://as.example/jwks: the AS answered HTTP 503 [as_unavailable]"


def test_query_and_user_info_are_never_shown() -> None:
    exc = AuthServerUnavailable("x")
    result = network_failed("as.jwks", exc, "GET", "https://u:secret@as.example/jwks?t=secret")
    assert "secret" not in result.detail
    assert result.detail.startswith("GET https://as.example/jwks: ")
