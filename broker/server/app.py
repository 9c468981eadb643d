"""Wiring of the gRPC server: mTLS credentials, limits, health, reflection, tracing.

``start_server`` returns a :class:`RunningServer` bound to the requested address (port 0 picks a
free port). Client certificates are required and checked against ``client_ca_pem`` by gRPC
(TEST-CATALOGUE E01-E03); the servicer then applies the identity policy (E04, E05).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection
from opentelemetry import trace

from broker.errors import ConfigError
from broker.server.gen.broker.v1 import broker_pb2, broker_pb2_grpc
from broker.server.policy import PolicyHolder
from broker.server.ports import LoginService, TokenBroker
from broker.server.servicer import DEFAULT_MAX_DEADLINE, TokenBrokerServicer
from broker.server.tracing import TracingInterceptor
from broker.tokens.audit_events import AuditTrail

log = logging.getLogger("broker.server.app")

SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["TokenBroker"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024


def server_options(*, max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel arguments bounding what one peer can make the server hold (F01, F02, F07)."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.max_metadata_size", 16 * 1024),
        ("grpc.max_concurrent_streams", 100),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 30_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", 300_000),
        ("grpc.max_connection_age_ms", 3_600_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
        ("grpc.server_handshake_timeout_ms", 10_000),
    ]


def check_client_ca_bundle(client_ca_pem: bytes) -> list[x509.Certificate]:
    """The bundle must hold at least one CA certificate and nothing else (E02)."""
    try:
        certs = x509.load_pem_x509_certificates(client_ca_pem)
    except ValueError as exc:
        raise ConfigError("client CA bundle is not PEM certificates") from exc
    for cert in certs:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise ConfigError("client CA bundle holds a certificate that is not a CA")
    return certs


def _check_server_pair(cert_pem: bytes, key_pem: bytes) -> None:
    """The server certificate chain parses and its first certificate matches the key."""
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, IndexError) as exc:
        raise ConfigError("server certificate or key is not valid PEM") from exc
    if leaf.public_key() != key.public_key():
        raise ConfigError("server certificate does not match the server key")


class ServerTlsReloader:
    """Server certificate, key and client CA bundle re-read without a restart (TEST-CATALOGUE E09).

    gRPC calls :meth:`fetch` before each new TLS handshake (``dynamic_ssl_server_credentials``).
    At most every ``poll_interval`` seconds it compares the files' mtime/size/inode with the last
    attempt and, when they changed, loads and checks them: new handshakes then use the new
    certificate and trust only the new CA bundle (a client of a removed CA is refused), while
    established connections and in-flight RPCs go on. A broken set of files keeps the previous
    one and logs an error (no file contents, no paths of secrets beyond the names given).
    """

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        client_ca_path: Path,
        *,
        poll_interval: float = 2.0,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._paths = (cert_path, key_path, client_ca_path)
        self._poll_interval = poll_interval
        self._monotonic = monotonic or time.monotonic
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._pems = self._load()
        self._checked_at = self._monotonic()
        self.generation = 1  # successful loads
        self.failures = 0  # reloads refused (the previous files stay in force)

    @property
    def server_cert_pem(self) -> bytes:
        return self._pems[0]

    @property
    def client_ca_pem(self) -> bytes:
        return self._pems[2]

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _load(self) -> tuple[bytes, bytes, bytes]:
        try:
            cert, key, ca = (path.read_bytes() for path in self._paths)
        except OSError as exc:
            raise ConfigError(f"TLS files unreadable ({type(exc).__name__})") from exc
        _check_server_pair(cert, key)
        check_client_ca_bundle(ca)
        return cert, key, ca

    def configuration(self) -> Any:
        """The current files as a ``grpc.ServerCertificateConfiguration``."""
        cert, key, ca = self._pems
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def reload(self) -> bool:
        """Re-read the files now. True if the new ones are in force; on error keep the old."""
        with self._lock:
            self._stamp = self._stat()
            try:
                pems = self._load()
            except ConfigError as exc:
                self.failures += 1
                log.error("TLS reload failed, keeping the previous certificates: %s", exc.message)
                return False
            self._pems = pems
            self.generation += 1
        log.info("TLS certificates reloaded (generation %d)", self.generation)
        return True

    def poll(self) -> bool:
        """Reload if the files changed since the last attempt. True if a reload succeeded."""
        if self._stat() == self._stamp:
            return False
        return self.reload()

    def fetch(self) -> Any:
        """gRPC's certificate fetcher: a new configuration, or None to keep the current one."""
        now = self._monotonic()
        if now - self._checked_at < self._poll_interval:
            return None
        self._checked_at = now
        try:
            changed = self.poll()
        except Exception:  # never break handshakes: the current configuration stays
            log.exception("TLS reload check failed")
            return None
        return self.configuration() if changed else None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.configuration(), self.fetch, require_client_authentication=True
        )


@dataclass
class RunningServer:
    """A started server. ``port`` is the bound port."""

    server: Any  # grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    policy: PolicyHolder

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING for the overall server and the broker service (F08)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float | None) -> None:
        """NOT_SERVING, stop accepting, let in-flight RPCs finish for ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.policy.stop()
        await self.server.stop(grace)

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def start_server(
    *,
    broker: TokenBroker,
    logins: LoginService,
    policy: PolicyHolder,
    bind: str,
    server_cert_pem: bytes,
    server_key_pem: bytes,
    client_ca_pem: bytes,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_concurrent_rpcs: int = 256,
    max_deadline: float = DEFAULT_MAX_DEADLINE,
    reflection: bool = False,
    tracer_provider: trace.TracerProvider | None = None,
    audit: AuditTrail | None = None,
    tls_reloader: ServerTlsReloader | None = None,
) -> RunningServer:
    """Start the broker's gRPC server over mutual TLS and report SERVING.

    With ``tls_reloader`` the certificate, key and client CA come from its files and are
    reloaded live (E09); the ``*_pem`` arguments are then not used for the listener.
    """
    check_client_ca_bundle(client_ca_pem)
    tracer = (
        tracer_provider.get_tracer("broker.server")
        if tracer_provider is not None
        else trace.get_tracer("broker.server")
    )
    server = grpc.aio.server(
        interceptors=[TracingInterceptor(tracer)],
        options=server_options(max_message_bytes=max_message_bytes),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    servicer = TokenBrokerServicer(
        broker=broker, logins=logins, policy=policy, max_deadline=max_deadline, audit=audit
    )
    broker_pb2_grpc.add_TokenBrokerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection:
        grpc_reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, grpc_reflection.SERVICE_NAME), server
        )
    if tls_reloader is not None:
        credentials = tls_reloader.credentials()
    else:
        credentials = grpc.ssl_server_credentials(
            [(server_key_pem, server_cert_pem)],
            root_certificates=client_ca_pem,
            require_client_auth=True,
        )
    port = server.add_secure_port(bind, credentials)
    if port == 0:
        raise ConfigError("gRPC server could not bind its address")
    await server.start()
    running = RunningServer(server=server, port=port, health=health_servicer, policy=policy)
    policy.start()
    await running.set_serving(True)
    return running
