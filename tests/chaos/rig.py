"""The chaos rig: a whole DevStack whose link to the verifier runs through a FaultProxy.

The peer is restarted behind the proxy: it listens on a new port and advertises, as its issuer,
the port it had before (``PeerSettings.public_port``), where the proxy now listens. The proxy
terminates TLS with the stack's server certificate and connects to the peer with verified TLS,
so request-aware toxics (``reset_on_request``) see the plaintext token request. The broker's
configuration is unchanged except ``http_timeout``; discovery's ``issuer`` matches it exactly.
Every proxy, peer and broker a test started is stopped by the ``chaos`` fixture
(``tests/chaos/conftest.py``), even when it fails. ``call`` and ``jwt_exp`` are the tests'
shared probes.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc

from broker.keys.didkey import jwk_from_did
from broker.server.gen.broker.v1 import broker_pb2
from devtools.faultproxy import FaultProxy, ProxyTls
from devtools.peer import PeerSettings, start_peer
from devtools.peer import stop_peer as stop_peer_process
from devtools.stack import DevStack
from tests.stacks import RPC_TIMEOUT, Stacks, start_with_retry

HTTP_TIMEOUT = 3  # [oauth].http_timeout of the chaos brokers (the stack default is 10)


@dataclass
class Chaos:
    stack: DevStack
    proxy: FaultProxy

    def refresh_entries(self) -> list[dict[str, Any]]:
        return [
            r for r in self.stack.peer.token_requests() if r.get("grant_type") == "refresh_token"
        ]


class ChaosStacks:
    def __init__(self, stacks: Stacks) -> None:
        self._stacks = stacks
        self._proxies: list[FaultProxy] = []

    def up(
        self,
        name: str = "chaos",
        *,
        refresh_token_ttl: int | None = None,
        extra_settings: dict[str, dict[str, str]] | None = None,
        **options: Any,
    ) -> Chaos:
        """``refresh_token_ttl``: the peer's refresh-token lifetime; ``extra_settings``: broker
        configuration lines added to a section (``{"tokens": {"refresh_fraction": "0.5"}}``,
        values as TOML text)."""
        stack = self._stacks.up(name, start_broker=False, **options)
        old = stack.peer
        public_port = urlsplit(old.issuer).port
        assert public_port is not None
        stop_peer_process(old)
        settings = PeerSettings(
            client_id=stack.did,
            client_jwk=jwk_from_did(stack.did),
            redirect_uris=[  # the ports the broker may move to at its start (devtools.ports)
                f"https://127.0.0.1:{port}/callback"
                for port in (stack.web_port, *stack.spare_web_ports)
            ],
            public_port=public_port,
            access_token_ttl=int(options.get("access_token_ttl", 120)),
            token_delay_ms=int(options.get("token_delay_ms", 0)),
            refresh_grace_seconds=int(options.get("refresh_grace_seconds", 0)),
            token_delay_after_ms=int(options.get("token_delay_after_ms", 0)),
            refresh_token_ttl=refresh_token_ttl,
        )
        stack.peer = start_peer(old.pki, settings, stack.workdir)
        assert stack.peer.issuer == old.issuer and stack.peer.direct_url is not None
        direct_port = urlsplit(stack.peer.direct_url).port
        assert direct_port is not None
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(str(old.pki.cert_file), str(old.pki.key_file))
        client = ssl.create_default_context(cafile=str(old.pki.ca_file))
        proxy = FaultProxy(
            "127.0.0.1",
            direct_port,
            listen_port=public_port,
            tls=ProxyTls(server=server, client=client),
        )
        self._proxies.append(proxy)
        proxy.start()
        text = stack.config_path.read_text()
        assert "http_timeout = 10\n" in text
        text = text.replace("http_timeout = 10\n", f"http_timeout = {HTTP_TIMEOUT}\n")
        for section, values in (extra_settings or {}).items():
            header = f"[{section}]\n"
            assert header in text
            lines = "".join(f"{key} = {value}\n" for key, value in values.items())
            text = text.replace(header, header + lines, 1)
        stack.config_path.write_text(text)
        start_with_retry(stack)
        return Chaos(stack, proxy)

    def close(self) -> None:
        for proxy in self._proxies:
            proxy.stop()


def jwt_exp(token: str) -> float:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return float(claims["exp"])


@dataclass(frozen=True)
class Call:
    """One GetAccessToken: when it was sent and answered (wall clock), and its outcome."""

    sent: float
    answered: float
    code: grpc.StatusCode
    token: str | None = None


def call(stub: Any, grant_id: str) -> Call:
    sent = time.time()
    try:
        resp = stub.GetAccessToken(
            broker_pb2.GetAccessTokenRequest(grant_id=grant_id), timeout=RPC_TIMEOUT
        )
    except grpc.RpcError as exc:
        return Call(sent, time.time(), exc.code())
    return Call(sent, time.time(), grpc.StatusCode.OK, resp.token.access_token)
