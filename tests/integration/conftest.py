"""Integration fixtures: the real oidc-provider peer (tests/peer) and the broker's HTTPS listener.

- ``pki``: a trustme test CA and one certificate for 127.0.0.1/localhost, shared by the peer and
  the broker listener; Node trusts the CA through ``NODE_EXTRA_CA_CERTS`` (the peer fetches our
  https request_uri), Python through an ``ssl.SSLContext``.
- ``client_signer``: the client key, generated IN SoftHSM (``hsm_store``), its did:key is the
  client_id registered at the peer.
- ``peer``: ``node tests/peer/peer.mjs`` on a free port (``npm ci`` first when node_modules is
  missing), ready once discovery answers; stopped at the end of the session.
- ``broker_web``: the listener (``broker.web.server.WebServer``) serving whatever app a test
  installs, on the first of the session's candidate ports (``web_ports``) it can bind;
  ``broker_base_url`` names the port it got. The redirect_uri registered at the peer needs the
  port before the peer starts, and a port found free is released until the listener binds it,
  so another pytest-xdist worker or process can take it meanwhile: the peer registers the
  callback on every candidate, and a test's listener moves to the next one when one is taken.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.errors import ConfigError
from broker.keys.api import KeyStore, Signer
from broker.keys.didkey import public_jwk, public_key_from_did
from broker.web.server import WebServer
from devtools.peer import (
    Peer,
    PeerSettings,
    PeerUnavailable,
    Pki,
    free_port,
    stop_peer,
)
from devtools.peer import ensure_node_modules as _ensure_node_modules
from devtools.peer import start_peer as _start_peer
from devtools.ports import PORT_ATTEMPTS

ROOT = Path(__file__).resolve().parents[2]
CALLBACK_PATH = "/callback"


def ensure_node_modules() -> None:
    try:
        _ensure_node_modules()
    except PeerUnavailable as exc:
        pytest.skip(str(exc))


def start_peer(pki: Pki, settings: PeerSettings, workdir: Path, *, timeout: float = 30.0) -> Peer:
    ensure_node_modules()
    return _start_peer(pki, settings, workdir, timeout=timeout)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(ca_file=base / "ca.pem", cert_file=base / "cert.pem", key_file=base / "key.pem")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    cert.cert_chain_pems[0].write_to_path(str(pki.cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(pki.cert_file), append=True)
    cert.private_key_pem.write_to_path(str(pki.key_file))
    return pki


@pytest.fixture(scope="session")
def key_store(request: pytest.FixtureRequest) -> KeyStore:
    """The SoftHSM key store (tests/conftest.py ``hsm_store``)."""
    store: KeyStore = request.getfixturevalue("hsm_store")
    return store


@pytest.fixture(scope="session")
def client_signer(key_store: KeyStore) -> Signer:
    label = f"it-client-{secrets.token_hex(4)}"
    key_store.generate(label, secrets.token_bytes(4))
    return key_store.signer(label)


def base_url(port: int) -> str:
    return f"https://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def web_ports() -> list[int]:
    """The ports a test's listener may bind, in order; the peer knows the callback on each."""
    return list(dict.fromkeys(free_port() for _ in range(PORT_ATTEMPTS)))


@pytest.fixture(scope="session")
def peer(
    pki: Pki,
    client_signer: Signer,
    web_ports: list[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Peer]:
    did = client_signer.kid
    settings = PeerSettings(
        client_id=did,
        client_jwk=public_jwk(public_key_from_did(did), kid=did),
        redirect_uris=[base_url(port) + CALLBACK_PATH for port in web_ports],
    )
    started = start_peer(pki, settings, tmp_path_factory.mktemp("peer"))
    try:
        yield started
    finally:
        stop_peer(started)


class SwappableApp:
    """An ASGI app that forwards to the app a test installs (404 before that)."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None
        self.port = 0
        """The port the listener serving this app bound."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


async def serve_on_a_candidate(app: SwappableApp, ports: list[int], pki: Pki) -> WebServer:
    """A started listener serving ``app`` on the first of ``ports`` it can bind (``app.port``).
    A port taken since it was found free fails the start (uvicorn does not share a bound port):
    the next candidate is tried; when none is left, the last failure is raised."""
    for attempt, port in enumerate(ports, start=1):
        server = WebServer(app, host="127.0.0.1", port=port, tls=pki.tls)
        try:
            await server.start()
        except ConfigError:
            if attempt == len(ports):
                raise
            continue
        app.port = server.port
        return server
    raise ConfigError("no candidate port to listen on")


@pytest.fixture
async def broker_web(pki: Pki, web_ports: list[int]) -> AsyncIterator[SwappableApp]:
    holder = SwappableApp()
    server = await serve_on_a_candidate(holder, web_ports, pki)
    try:
        yield holder
    finally:
        await server.stop()


@pytest.fixture
def broker_base_url(broker_web: SwappableApp) -> str:
    """The base URL of this test's listener (its callback is registered at the peer)."""
    return base_url(broker_web.port)
