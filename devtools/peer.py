"""The oidc-provider 8.8.1 test peer (``tests/peer``): a DOME-like verifier for tests and the demo.

``start_peer`` runs ``node tests/peer/peer.mjs CONFIG`` (``npm ci`` first when node_modules is
missing), waits for its discovery document and returns a :class:`Peer`; ``stop_peer`` ends it.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from broker.web.server import TlsFiles

ROOT = Path(__file__).resolve().parents[1]
PEER_DIR = ROOT / "tests" / "peer"


class PeerUnavailable(RuntimeError):
    """node/npm are missing or the peer did not start."""


@dataclass(frozen=True)
class Pki:
    """A CA file and one server certificate + key (PEM files) for 127.0.0.1/localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(certfile=str(self.cert_file), keyfile=str(self.key_file))


@dataclass(frozen=True)
class MintedGrant:
    """A grant the peer minted in bulk: its id at the peer, its refresh token, the user."""

    grant_id: str
    refresh_token: str = field(repr=False)
    subject: str


@dataclass(frozen=True)
class Peer:
    issuer: str
    process: subprocess.Popen[bytes] = field(repr=False)
    pki: Pki
    direct_url: str | None = None
    """Where the peer itself listens when ``issuer`` names another port (a proxy in front, see
    ``PeerSettings.public_port``); the admin endpoints are reached there."""

    @property
    def admin_base(self) -> str:
        return self.direct_url or self.issuer

    def admin_log(self) -> dict[str, Any]:
        with httpx.Client(verify=self.pki.ssl_context()) as http:
            resp = http.get(f"{self.admin_base}/admin/log")
            resp.raise_for_status()
            data: dict[str, Any] = resp.json()
            return data

    def reset_log(self) -> None:
        with httpx.Client(verify=self.pki.ssl_context()) as http:
            http.post(f"{self.admin_base}/admin/reset").raise_for_status()

    def set_access_token_ttl(self, seconds: int) -> None:
        """Access tokens the peer issues from now on live ``seconds`` (test-only admin call)."""
        with httpx.Client(verify=self.pki.ssl_context()) as http:
            resp = http.post(f"{self.admin_base}/admin/ttl", json={"access_token_ttl": seconds})
            resp.raise_for_status()

    def register_client(self, client: PeerClient) -> None:
        """One more client from now on (test-only admin call): what adding the did to the
        TSL and restarting the Verifier does, without the restart's loss of every refresh
        token. Raises :class:`httpx.HTTPStatusError` (409) when it is registered already."""
        with httpx.Client(verify=self.pki.ssl_context()) as http:
            resp = http.post(f"{self.admin_base}/admin/clients", json=client.as_config())
            resp.raise_for_status()

    def mint_grants(self, count: int, *, timeout: float = 300.0) -> list[MintedGrant]:
        """``count`` grants of the peer's user for the first configured client, each with one
        refresh token the token endpoint accepts (test-only admin call; the peer must have been
        started with ``PeerSettings.bulk_grants``)."""
        with httpx.Client(verify=self.pki.ssl_context(), timeout=timeout) as http:
            resp = http.post(f"{self.admin_base}/admin/grants", json={"count": count})
            resp.raise_for_status()
            body = resp.json()
        subject = str(body["account_id"])
        return [
            MintedGrant(str(g["grant_id"]), str(g["refresh_token"]), subject)
            for g in body["grants"]
        ]

    def token_counts(self) -> dict[str, Any]:
        """The token requests received, counted: ``total``, ``by_status`` (status as a string)
        and ``by_grant`` (refresh_token requests by the peer's grant id)."""
        with httpx.Client(verify=self.pki.ssl_context(), timeout=60.0) as http:
            resp = http.get(f"{self.admin_base}/admin/token_counts")
            resp.raise_for_status()
            data: dict[str, Any] = resp.json()
            return data

    def token_requests(self) -> list[dict[str, Any]]:
        reqs = self.admin_log().get("token_requests", [])
        return list(reqs) if isinstance(reqs, list) else []


def free_port() -> int:
    """A port free now; released at once, so the child given it may find it taken: launch
    through :func:`devtools.ports.launch_on_fresh_ports`, or let the child bind port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_node_modules() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PeerUnavailable("node/npm are not installed")
    if not (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER_DIR, check=True, capture_output=True
        )


@dataclass(frozen=True)
class PeerClient:
    """One registered client: its did (the client_id), public JWK and redirect URIs."""

    client_id: str
    jwk: dict[str, str]
    redirect_uris: list[str]

    def as_config(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "jwk": self.jwk, "redirect_uris": self.redirect_uris}


@dataclass
class PeerSettings:
    client_id: str
    client_jwk: dict[str, str]
    redirect_uris: list[str]
    pkce_required: bool = True
    access_token_ttl: int = 120
    token_delay_ms: int = 0
    refresh_grace_seconds: int = 0
    """A rotated-out refresh token is still accepted once within this many seconds (0: strict)."""
    token_delay_after_ms: int = 0
    """Delay after /token was processed (refresh token rotated), before the response is sent."""
    public_port: int | None = None
    """The port the issuer URL names (a proxy in front of the peer); None: the listening port."""
    refresh_token_ttl: int | None = None
    """Lifetime of each issued (and each rotated) refresh token, seconds; None: the peer's 3600."""
    more_clients: list[PeerClient] = field(default_factory=list)
    """Clients registered besides ``client_id`` (e.g. both dids of a key rotation)."""
    bulk_grants: bool = False
    """Enable the peer's ``POST /admin/grants`` (:meth:`Peer.mint_grants`): benchmarks only."""


START_ATTEMPTS = 3
START_TIMEOUT = 15.0  # node prints its ready line in well under a second


def _launch(
    config_path: Path, env: dict[str, str], stderr_path: Path
) -> tuple[subprocess.Popen[bytes], bytes]:
    """Run node and read its ready line, never waiting for ever: node 20 was seen (once in many
    hundred starts) to deadlock on a futex during start-up; such a start is killed and retried."""
    for attempt in range(1, START_ATTEMPTS + 1):
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                ["node", str(PEER_DIR / "peer.mjs"), str(config_path)],
                cwd=PEER_DIR,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout=START_TIMEOUT)
        if ready:
            line = process.stdout.readline()  # one JSON line once listening
            if line:
                return process, line
            process.wait(timeout=5)
            raise PeerUnavailable(f"peer did not start: {stderr_path.read_text()[-2000:]}")
        process.kill()
        process.wait(timeout=5)
        process.stdout.close()
        if attempt == START_ATTEMPTS:
            break
    raise PeerUnavailable(f"peer printed nothing within {START_TIMEOUT:g}s, {START_ATTEMPTS} times")


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
        "refresh_grace_seconds": settings.refresh_grace_seconds,
        "token_delay_after_ms": settings.token_delay_after_ms,
        "vc_file": str(PEER_DIR / "learcredential-employee.json"),
    }
    if settings.public_port is not None:
        config["public_port"] = settings.public_port
    if settings.refresh_token_ttl is not None:
        config["refresh_token_ttl"] = settings.refresh_token_ttl
    if settings.more_clients:
        config["clients"] = [c.as_config() for c in settings.more_clients]
    if settings.bulk_grants:
        config["bulk_grants"] = True
    config_path = workdir / f"peer-{secrets.token_hex(4)}.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(pki.ca_file)}
    env.pop("PEER_TOKEN_DELAY_MS", None)
    stderr_path = workdir / f"{config_path.stem}.stderr"
    process, line = _launch(config_path, env, stderr_path)
    ready = json.loads(line)
    issuer = ready["issuer"]
    direct = f"https://127.0.0.1:{int(ready['port'])}" if settings.public_port else None
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=pki.ssl_context()) as http:
        while True:
            try:
                url = f"{direct or issuer}/.well-known/openid-configuration"
                if http.get(url).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise PeerUnavailable("peer discovery did not answer")
            time.sleep(0.05)
    return Peer(issuer=issuer, process=process, pki=pki, direct_url=direct)


def stop_peer(peer: Peer) -> None:
    peer.process.terminate()
    try:
        peer.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        peer.process.kill()
        peer.process.wait(timeout=5)
    if peer.process.stdout is not None:
        peer.process.stdout.close()
