"""Integration fixtures: the real oidc-provider peer (tests/peer) and the broker's HTTPS listener.

- ``pki``: a trustme test CA and one certificate for 127.0.0.1/localhost, shared by the peer and
  the broker listener; Node trusts the CA through ``NODE_EXTRA_CA_CERTS`` (the peer fetches our
  https request_uri), Python through an ``ssl.SSLContext``.
- ``client_signer``: the client key, generated IN SoftHSM (``hsm_store``), its did:key is the
  client_id registered at the peer.
- ``peer``: ``node tests/peer/peer.mjs`` on a free port (``npm ci`` first when node_modules is
  missing), ready once discovery answers; stopped at the end of the session.
- ``broker_web``: the listener (``broker.web.server.WebServer``) on the session's reserved port,
  serving whatever app a test installs (the redirect_uri registered at the peer needs the port
  before the peer starts).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.keys.api import KeyStore, Signer
from broker.keys.didkey import public_jwk, public_key_from_did
from broker.web.server import TlsFiles, WebServer

ROOT = Path(__file__).resolve().parents[2]
PEER_DIR = ROOT / "tests" / "peer"
CALLBACK_PATH = "/callback"


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(certfile=str(self.cert_file), keyfile=str(self.key_file))


@dataclass(frozen=True)
class Peer:
    issuer: str
    process: subprocess.Popen[bytes] = field(repr=False)
    pki: Pki

    def admin_log(self) -> dict[str, Any]:
        with httpx.Client(verify=self.pki.ssl_context()) as http:
            resp = http.get(f"{self.issuer}/admin/log")
            resp.raise_for_status()
            data: dict[str, Any] = resp.json()
            return data

    def reset_log(self) -> None:
        with httpx.Client(verify=self.pki.ssl_context()) as http:
            http.post(f"{self.issuer}/admin/reset").raise_for_status()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_node_modules() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed")
    if not (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER_DIR, check=True, capture_output=True
        )


@dataclass
class PeerSettings:
    client_id: str
    client_jwk: dict[str, str]
    redirect_uris: list[str]
    pkce_required: bool = True
    access_token_ttl: int = 120
    token_delay_ms: int = 0


def start_peer(pki: Pki, settings: PeerSettings, workdir: Path, *, timeout: float = 30.0) -> Peer:
    """Start the peer and wait for its discovery document (bounded by ``timeout``)."""
    ensure_node_modules()
    config = {
        "host": "127.0.0.1",
        "port": 0,
        "tls_cert": str(pki.cert_file),
        "tls_key": str(pki.key_file),
        "client": {
            "client_id": settings.client_id,
            "jwk": settings.client_jwk,
            "redirect_uris": settings.redirect_uris,
        },
        "pkce_required": settings.pkce_required,
        "access_token_ttl": settings.access_token_ttl,
        "token_delay_ms": settings.token_delay_ms,
        "vc_file": str(PEER_DIR / "learcredential-employee.json"),
    }
    config_path = workdir / f"peer-{secrets.token_hex(4)}.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(pki.ca_file)}
    env.pop("PEER_TOKEN_DELAY_MS", None)
    stderr_path = workdir / f"{config_path.stem}.stderr"
    stderr = stderr_path.open("wb")
    process = subprocess.Popen(
        ["node", str(PEER_DIR / "peer.mjs"), str(config_path)],
        cwd=PEER_DIR,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
    )
    stderr.close()
    assert process.stdout is not None
    line = process.stdout.readline()  # the peer prints one JSON line when listening
    if not line:
        process.wait(timeout=5)
        raise RuntimeError(f"peer did not start: {stderr_path.read_text()[-2000:]}")
    issuer = json.loads(line)["issuer"]
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=pki.ssl_context()) as http:
        while True:
            try:
                if http.get(f"{issuer}/.well-known/openid-configuration").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("peer discovery did not answer")
            time.sleep(0.05)
    return Peer(issuer=issuer, process=process, pki=pki)


def stop_peer(peer: Peer) -> None:
    peer.process.terminate()
    try:
        peer.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        peer.process.kill()
        peer.process.wait(timeout=5)
    if peer.process.stdout is not None:
        peer.process.stdout.close()


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


@pytest.fixture(scope="session")
def web_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def broker_base_url(web_port: int) -> str:
    return f"https://127.0.0.1:{web_port}"


@pytest.fixture(scope="session")
def peer(
    pki: Pki,
    client_signer: Signer,
    broker_base_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Peer]:
    did = client_signer.kid
    settings = PeerSettings(
        client_id=did,
        client_jwk=public_jwk(public_key_from_did(did), kid=did),
        redirect_uris=[broker_base_url + CALLBACK_PATH],
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


@pytest.fixture
async def broker_web(pki: Pki, web_port: int) -> AsyncIterator[SwappableApp]:
    holder = SwappableApp()
    server = WebServer(holder, host="127.0.0.1", port=web_port, tls=pki.tls)
    await server.start()
    try:
        yield holder
    finally:
        await server.stop()
