"""A whole local system, as real processes: the demo and the end-to-end tests run on it.

``DevStack.up(workdir)`` (its steps before any process: :mod:`devtools.stack_setup`):
1. a private SoftHSM token (``softhsm/init-token.sh``, PINs in files) and, through the ceremony
   CLI, the client key and the sealing key (audit log in ``workdir``);
2. a throw-away mTLS PKI: one CA, a server certificate for 127.0.0.1/localhost (gRPC, HTTPS
   listener and the verifier), a client certificate with a SPIFFE URI SAN;
3. the DOME-like verifier (oidc-provider 8.8.1 in ``tests/peer``) registering our did:key;
4. ``broker.toml`` + ``policy.toml`` and ``broker serve`` as a child process, ready once its
   gRPC health check answers SERVING.
``down()`` stops everything it started. Nothing is left running.

For the end-to-end tests: ``replica(name)`` is a second ``broker serve`` on the same key, peer and
store with its own gRPC/HTTPS ports; ``issue_client_cert(identity)`` makes a client certificate
from the stack's CA for another caller identity; ``refresh_requests()`` counts the
``refresh_token`` requests the peer received. For a key rotation: ``up(more_dids=...)`` has the
peer know further clients from its start, ``register_client(did)`` registers one at the running
peer (a new key's did is only known once ``broker keys rotate prepare`` made it), ``use_key``
rewrites this process's ``[key] uri`` and client_id, and ``cli(...)`` runs a ``broker``
command with the stack's environment (SoftHSM, audit log).
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urljoin

import grpc
import httpx

from broker.keys.didkey import jwk_from_did
from broker.server.gen.broker.v1 import broker_pb2_grpc
from devtools.broker_process import start_serving, stop
from devtools.peer import Peer, PeerClient, PeerSettings, free_port, start_peer, stop_peer
from devtools.pki import Ca, Issued
from devtools.ports import PORT_ATTEMPTS, PortInUse, launch_on_fresh_ports
from devtools.stack_setup import (
    CALLER_IDENTITY,
    BrokerConfig,
    StackError,
    make_pki,
    provision_keys,
    render_config,
    run_cli,
    store_section,
    telemetry_section,
)

__all__ = ["DevStack", "StackError", "follow_login"]


@dataclass
class DevStack:
    workdir: Path
    env: dict[str, str] = field(repr=False)
    key_uri: str
    did: str
    ca_file: Path
    client_cert: Path
    client_key: Path
    peer: Peer
    grpc_port: int
    web_port: int
    config_path: Path
    audit_log: Path
    broker: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    ceremony_outputs: dict[str, str] = field(default_factory=dict, repr=False)
    ca: Ca | None = field(default=None, repr=False)
    config: BrokerConfig | None = field(default=None, repr=False)
    log_name: str = "broker.log"
    owns_peer: bool = True
    """``down()`` stops the peer only when this stack started it (not on a replica)."""
    movable_ports: bool = False
    """Never served yet: a port found taken at the start is replaced by a fresh one."""
    spare_web_ports: list[int] = field(default_factory=list, repr=False)
    """Web ports whose callback the peer knows, to move to (the primary stack's)."""
    serve_module: str = "broker.cli"
    """The module ``start_broker`` runs as ``python -m <module> serve --config ...`` (a bench
    can name a wrapper that observes the same serve process, see ``session_probe``)."""

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        workdir: Path,
        *,
        otlp_endpoint: str | None = None,
        store_kind: str = "sqlite",
        store_dsn: str | None = None,
        access_token_ttl: int = 120,
        token_delay_ms: int = 0,
        refresh_threshold: float = 60.0,
        min_serve_ttl: float = 10.0,
        start_broker: bool = True,
        store_schema: str | None = None,
        background_interval: float = 5.0,
        max_concurrent_rpcs: int | None = None,
        refresh_grace_seconds: int = 0,
        token_delay_after_ms: int = 0,
        public_port: int | None = None,
        more_dids: tuple[str, ...] = (),
    ) -> DevStack:
        """``public_port``: the listener's public base URL (and so the redirect_uri the peer
        registers and the request_uri base) names this port instead of the listener's own: a
        front (e.g. a :class:`~devtools.faultproxy.FaultProxy` the caller starts there)
        relays to the listener, and replicas share that public URL. ``more_dids``: clients the
        peer registers besides the stack's own did (same redirect_uri)."""
        keys = provision_keys(workdir)
        env, key_uri, did, audit_log = keys.env, keys.key_uri, keys.did, keys.audit_log
        outputs = dict(keys.outputs)
        cli = [sys.executable, "-m", "broker.cli", "keys"]
        ca, pki, pki_dir = make_pki(workdir)
        # A port may be taken before the broker binds it: the peer knows the callback on each
        # web port the broker may move to (devtools.ports); its issuer, so the store, stays.
        web_ports = [free_port() for _ in range(PORT_ATTEMPTS)]
        web_port, grpc_port = web_ports[0], free_port()
        public = f"https://127.0.0.1:{public_port or web_port}"
        callbacks = list(
            dict.fromkeys(f"https://127.0.0.1:{public_port or p}/callback" for p in web_ports)
        )
        issuer_tls = pki
        peer = start_peer(
            issuer_tls,
            PeerSettings(
                client_id=did,
                client_jwk=jwk_from_did(did),
                redirect_uris=callbacks,
                access_token_ttl=access_token_ttl,
                token_delay_ms=token_delay_ms,
                refresh_grace_seconds=refresh_grace_seconds,
                token_delay_after_ms=token_delay_after_ms,
                more_clients=[
                    PeerClient(d, jwk_from_did(d), [f"{public}/callback"]) for d in more_dids
                ],
            ),
            workdir,
        )
        try:  # from here on, a failure must not leave the peer running
            outputs["tsl-entry"] = run_cli(
                [
                    *cli,
                    "tsl-entry",
                    "--key",
                    key_uri,
                    "--issuer",
                    peer.issuer,
                    "--url",
                    public,
                    "--redirect-uri",
                    f"{public}/callback",
                ],
                env,
                "keys tsl-entry",
            )
            policy = workdir / "policy.toml"
            policy.write_text(
                f'[identities."{CALLER_IDENTITY}"]\nmethods = ["*"]\ngrants = ["*"]\n'
            )
            config_path = workdir / "broker.toml"
            config = BrokerConfig(
                key_uri=key_uri,
                issuer=peer.issuer,
                did=did,
                redirect_uri=f"{public}/callback",
                ca_file=pki.ca_file,
                cert_file=pki.cert_file,
                key_file=pki.key_file,
                web_port=web_port,
                grpc_port=grpc_port,
                policy_file=policy,
                store=store_section(store_kind, workdir, store_dsn, store_schema),
                telemetry=telemetry_section(otlp_endpoint),
                refresh_threshold=refresh_threshold,
                min_serve_ttl=min_serve_ttl,
                background_interval=background_interval,
                max_concurrent_rpcs=max_concurrent_rpcs,
                audit_log=audit_log,
                public_port=public_port,
            )
            config_path.write_text(render_config(config))
        except BaseException:
            stop_peer(peer)
            raise
        stack = cls(
            workdir=workdir,
            env=env,
            key_uri=key_uri,
            did=did,
            ca_file=pki.ca_file,
            client_cert=pki_dir / "client.pem",
            client_key=pki_dir / "client-key.pem",
            peer=peer,
            grpc_port=grpc_port,
            web_port=web_port,
            config_path=config_path,
            audit_log=audit_log,
            ceremony_outputs=outputs,
            ca=ca,
            config=config,
            movable_ports=True,
            spare_web_ports=web_ports[1:],
        )
        if start_broker:
            try:
                stack.start_broker()
            except BaseException:
                stack.down()
                raise
        return stack

    # --- the broker process ------------------------------------------------------------------

    def start_broker(self, *, timeout: float = 30.0) -> None:
        """Start ``broker serve`` and wait until it is SERVING. A start that failed because one
        of its ports was taken raises :class:`~devtools.ports.PortInUse`; a stack that has not
        served yet then moves to fresh ports and starts again (nobody knows its ports yet)."""
        if not self.movable_ports:
            return self._start_broker(timeout)

        def launch() -> None:
            try:
                self._start_broker(timeout)
            except PortInUse:
                spare = self.spare_web_ports
                self._use_ports(spare.pop(0) if spare else free_port(), free_port())
                raise

        launch_on_fresh_ports(launch)
        self.movable_ports = False

    def _start_broker(self, timeout: float) -> None:
        self.broker = start_serving(
            [sys.executable, "-m", self.serve_module, "serve", "--config", str(self.config_path)],
            env=self.env,
            log_path=self.workdir / self.log_name,
            channel=self.channel,
            timeout=timeout,
        )

    def stop_broker(self, *, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.broker is None:
            return None
        code = stop(self.broker, sig=sig, timeout=timeout)
        self.broker = None
        return code

    def broker_log(self) -> str:
        path = self.workdir / self.log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_broker(self) -> int | None:
        """``kill -9`` the broker process (no drain, no flush) and reap it."""
        return self.stop_broker(sig=signal.SIGKILL)

    def down(self) -> None:
        self.stop_broker()
        if self.owns_peer:
            stop_peer(self.peer)

    # --- more processes and callers ----------------------------------------------------------

    def replica(self, name: str) -> DevStack:
        """Another ``broker serve`` sharing this stack's key (same SoftHSM token), peer, policy
        and store (a shared store needs PostgreSQL), on its own gRPC and HTTPS ports, with its
        own ``broker-<name>.toml``, log and audit log. Not started: call ``start_broker()``.
        Its redirect_uri is its own callback, which the peer does not know: logins go through
        the primary stack; the replica serves the grants it finds in the shared store. Unless
        the stack was made with ``public_port``: then every replica has the same public base
        URL and redirect_uri (whichever listener the front relays to serves a login).
        Its ``down()`` leaves the peer running."""
        if self.config is None:
            raise StackError("this stack has no rendered configuration to derive a replica from")
        if not name.isidentifier():
            raise StackError("a replica name must be an identifier")
        config = replace(self.config, audit_log=self.workdir / f"audit-{name}.jsonl")
        replica = replace(
            self,
            config_path=self.workdir / f"broker-{name}.toml",
            audit_log=config.audit_log,
            broker=None,
            config=config,
            log_name=f"broker-{name}.log",
            owns_peer=False,
            movable_ports=True,
            spare_web_ports=[],
        )
        replica._use_ports(free_port(), free_port())
        return replica

    def _use_ports(self, web_port: int, grpc_port: int) -> None:
        """Listen on these ports (the callback names the web port unless a front is public)."""
        assert self.config is not None
        public = self.config.public_port is not None
        self.config = replace(
            self.config,
            grpc_port=grpc_port,
            web_port=web_port,
            redirect_uri=(
                self.config.redirect_uri if public else f"https://127.0.0.1:{web_port}/callback"
            ),
        )
        self.config_path.write_text(render_config(self.config))
        self.web_port, self.grpc_port = web_port, grpc_port

    def issue_client_cert(self, identity: str, name: str) -> tuple[Path, Path]:
        """A client certificate from this stack's CA with ``identity`` as its URI SAN (and CN
        ``name``); returns (certificate file, key file)."""
        if self.ca is None:
            raise StackError("this stack has no CA to issue client certificates from")
        if not name.replace("-", "").isalnum():
            raise StackError("a certificate name must be alphanumeric (dashes allowed)")
        issued: Issued = self.ca.issue(cn=name, uris=(identity,))
        cert, key = self.workdir / "pki" / f"{name}.pem", self.workdir / "pki" / f"{name}-key.pem"
        for path, data in ((cert, issued.cert_pem), (key, issued.key_pem)):
            path.write_bytes(data)
            path.chmod(0o600)
        return cert, key

    def register_client(self, did: str) -> None:
        """The peer registers ``did`` as one more client, with this stack's redirect_uri (what
        the operator does at the Verifier between ``rotate prepare`` and ``rotate activate``)."""
        if self.config is None:
            raise StackError("this stack has no rendered configuration")
        self.peer.register_client(PeerClient(did, jwk_from_did(did), [self.config.redirect_uri]))

    def use_key(self, key_uri: str, did: str) -> None:
        """Rewrite this process's configuration to ``key_uri`` (its ``[key] uri``) and ``did``
        (``[oauth] client_id``); the next ``start_broker()`` serves as that identity."""
        if self.config is None:
            raise StackError("this stack has no rendered configuration")
        self.config = replace(self.config, key_uri=key_uri, did=did)
        self.config_path.write_text(render_config(self.config))
        self.key_uri, self.did = key_uri, did

    def cli(self, *argv: str, what: str | None = None) -> str:
        """``python -m broker.cli ARGV`` with the stack's environment (its SoftHSM token, audit
        log); returns stdout, raises :class:`StackError` with stderr's tail on a non-zero exit."""
        return run_cli(
            [sys.executable, "-m", "broker.cli", *argv], self.env, what or " ".join(argv[:3])
        )

    def refresh_requests(self) -> int:
        """How many ``refresh_token`` grant requests the peer has received (since its last
        ``reset_log``)."""
        return sum(1 for r in self.peer.token_requests() if r.get("grant_type") == "refresh_token")

    # --- clients -----------------------------------------------------------------------------

    def channel_credentials(
        self, cert: Path | None = None, key: Path | None = None
    ) -> grpc.ChannelCredentials:
        """mTLS credentials: the stack's client certificate unless ``cert``/``key`` are given
        (e.g. from :meth:`issue_client_cert`)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=(key or self.client_key).read_bytes(),
            certificate_chain=(cert or self.client_cert).read_bytes(),
        )

    def channel(self, cert: Path | None = None, key: Path | None = None) -> grpc.Channel:
        return grpc.secure_channel(
            f"127.0.0.1:{self.grpc_port}", self.channel_credentials(cert, key)
        )

    def aio_channel(
        self,
        cert: Path | None = None,
        key: Path | None = None,
        options: list[tuple[str, int | str]] | None = None,
    ) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.grpc_port}", self.channel_credentials(cert, key), options=options
        )

    def stub(self, channel: grpc.Channel) -> broker_pb2_grpc.TokenBrokerStub:
        return broker_pb2_grpc.TokenBrokerStub(channel)  # type: ignore[no-untyped-call]


def follow_login(authorization_url: str, ca_file: Path, *, max_hops: int = 12) -> str:
    """Act as the user agent: follow the verifier's redirects (auto-login, no browser) until the
    broker's callback answers; returns the final URL reached."""
    url = authorization_url
    context = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(verify=context, follow_redirects=False, timeout=15.0) as http:
        for _ in range(max_hops):
            resp = http.get(url)
            if resp.status_code in (301, 302, 303, 307, 308):
                url = urljoin(url, resp.headers["location"])
                continue
            if resp.status_code >= 400:
                raise StackError(f"login stopped at HTTP {resp.status_code}")
            return url
    raise StackError("too many redirects during login")
