"""Wiring of the gRPC server: mTLS credentials, limits, health, reflection, tracing.

``start_server`` returns a :class:`RunningServer` bound to the requested address (port 0 picks a
free port). Client certificates are required and checked against ``client_ca_pem`` by gRPC
(TEST-CATALOGUE E01-E03); the servicer then applies the identity policy (E04, E05).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import metrics, trace

from broker.audit.trail import AuditTrail
from broker.errors import ConfigError
from broker.server.errors import REASON_OVERLOADED, status_trailers
from broker.server.gen.broker.v1 import broker_pb2, broker_pb2_grpc
from broker.server.policy import PolicyHolder
from broker.server.ports import LoginService, TokenService
from broker.server.reflection import enable_reflection
from broker.server.servicer import DEFAULT_MAX_DEADLINE, TokenBrokerServicer
from broker.server.tracing import TracingInterceptor

log = logging.getLogger("broker.server.app")

SERVICE_NAME = broker_pb2.DESCRIPTOR.services_by_name["TokenBroker"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024


DEFAULT_MAX_METADATA_BYTES = 16 * 1024
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
MIN_STREAMS_PER_CONNECTION = 1024
# RPCs never counted against ``max_concurrent_rpcs``: health must answer under overload (F06).
LIMIT_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def streams_per_connection(max_concurrent_rpcs: int) -> int:
    """The HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS the server advertises on each connection.

    Deliberately well above ``max_concurrent_rpcs``: the admission limit is enforced by
    :class:`ConcurrencyLimiter`, which answers excess calls with RESOURCE_EXHAUSTED (fail fast,
    logged, counted). A stream refused by the transport instead reaches the caller as UNAVAILABLE
    (RST_STREAM REFUSED_STREAM) with nothing logged, and grpcio 1.85 clients do not queue calls at
    the advertised limit, not even once the SETTINGS frame is known (measured: 1,000 calls on one
    ready channel with a limit of 100 or 256 streams -> 860 / 640 UNAVAILABLE). The stream limit
    therefore only bounds the transport state one connection can hold; handlers stay bounded by
    ``max_concurrent_rpcs`` whatever the peer does with RST_STREAM (F07, CVE-2023-44487), because
    a slot is held until the handler returns.
    """
    return max(MIN_STREAMS_PER_CONNECTION, 4 * max_concurrent_rpcs)


def server_options(
    *,
    max_message_bytes: int,
    max_concurrent_rpcs: int = 256,
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> list[tuple[str, int]]:
    """Channel arguments bounding what one peer can make the server hold (F01, F02, F07).

    The metadata soft and hard limits are equal, so the cut-off is deterministic (between the two
    gRPC rejects at random). ``handshake_timeout`` closes connections that never finish TLS.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.max_metadata_size", max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", max_metadata_bytes),
        ("grpc.max_concurrent_streams", streams_per_connection(max_concurrent_rpcs)),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 30_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", 300_000),
        ("grpc.max_connection_age_ms", 3_600_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
        ("grpc.server_handshake_timeout_ms", max(1, round(handshake_timeout * 1000))),
    ]


class ConcurrencyLimiter(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """At most ``limit`` broker RPCs at once; the excess fails fast with RESOURCE_EXHAUSTED (F06).

    Replaces grpc.aio's ``maximum_concurrent_rpcs``, which counts every RPC, health checks
    included, so an overloaded server would also fail its probes. Here health RPCs
    (:data:`LIMIT_EXEMPT_PREFIXES`) are never counted nor refused. A slot is taken when the
    handler starts (after the request was received and decoded, so a rejected message cannot
    leak one) and given back when it returns, fails or is cancelled; a ``WatchAccessToken``
    stream holds its slot while it is open. One warning is logged when an overload starts and
    one line when it ends, with the number of rejected calls. Streaming handlers must be async
    generators (as the broker's and grpcio-reflection's aio servicers are). Runs on the server's
    event loop only, so the counters need no lock.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError("max_concurrent_rpcs must be at least 1")
        self.limit = limit
        self.active = 0
        self.rejected = 0  # since start
        self._episode_rejected = 0
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    @property
    def overloaded(self) -> bool:
        return self._episode_rejected > 0

    def _acquire(self) -> bool:
        if self.active >= self.limit:
            self.rejected += 1
            self._episode_rejected += 1
            if self._episode_rejected == 1:
                log.warning(
                    "gRPC overload: %d RPCs in flight, rejecting new calls with RESOURCE_EXHAUSTED",
                    self.limit,
                )
            return False
        self.active += 1
        return True

    def _release(self) -> None:
        self.active -= 1
        if self._episode_rejected and self.active < self.limit:
            log.warning("gRPC overload over: %d calls were rejected", self._episode_rejected)
            self._episode_rejected = 0

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(LIMIT_EXEMPT_PREFIXES):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any) -> Any:
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                if not self._acquire():
                    await _abort_overloaded(context)
                try:
                    return await behavior(request, context)
                finally:
                    self._release()

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream_behavior = handler.unary_stream

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                if not self._acquire():
                    await _abort_overloaded(context)
                try:
                    async for item in stream_behavior(request, context):
                        yield item
                finally:
                    self._release()

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            client_stream_behavior = handler.stream_unary

            async def client_stream(requests: Any, context: Any) -> Any:
                if not self._acquire():
                    await _abort_overloaded(context)
                try:
                    return await client_stream_behavior(requests, context)
                finally:
                    self._release()

            return grpc.stream_unary_rpc_method_handler(
                client_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        bidi_behavior = handler.stream_stream

        async def bidi(requests: Any, context: Any) -> AsyncIterator[Any]:
            if not self._acquire():
                await _abort_overloaded(context)
            try:
                async for item in bidi_behavior(requests, context):
                    yield item
            finally:
                self._release()

        return grpc.stream_stream_rpc_method_handler(
            bidi,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


_OVERLOADED = "server overloaded, retry later with backoff"
_OVERLOADED_TRAILERS = status_trailers(
    grpc.StatusCode.RESOURCE_EXHAUSTED, _OVERLOADED, REASON_OVERLOADED, {"retryable": "true"}
)


async def _abort_overloaded(context: Any) -> None:
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED, _OVERLOADED, trailing_metadata=_OVERLOADED_TRAILERS
    )


def client_retry_service_config(*, max_attempts: int = 4) -> str:
    """The gRPC service config callers should set (channel option ``grpc.service_config``).

    Retries UNAVAILABLE (HSM or Verifier briefly down, connection lost, a stream refused by a
    transport) with exponential backoff and jitter, never RESOURCE_EXHAUSTED: an overloaded
    broker must not be hit again at once. ``retryThrottling`` stops retries when most calls fail.
    Every broker RPC is safe to retry: token reads are idempotent, a repeated StartAuthorization
    only opens a second login.
    """
    if not 2 <= max_attempts <= 5:  # gRPC caps maxAttempts at 5
        raise ConfigError("max_attempts must be between 2 and 5")
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE_NAME}],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    )


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
    limiter: ConcurrencyLimiter | None = None

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
    broker: TokenService,
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
    meter_provider: metrics.MeterProvider | None = None,
    audit: AuditTrail | None = None,
    tls_reloader: ServerTlsReloader | None = None,
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    cn_identities: bool = False,
) -> RunningServer:
    """Start the broker's gRPC server over mutual TLS and report SERVING.

    With ``tls_reloader`` the certificate, key and client CA come from its files and are
    reloaded live (E09); the ``*_pem`` arguments are then not used for the listener.
    At most ``max_concurrent_rpcs`` broker RPCs run at once, health checks not counted (F06, see
    :class:`ConcurrencyLimiter`); the per-connection stream limit follows from it
    (:func:`streams_per_connection`). ``cn_identities``: see :mod:`broker.server.identity`.
    ``reflection``: serve gRPC reflection v1 and v1alpha (:mod:`broker.server.reflection`).
    """
    check_client_ca_bundle(client_ca_pem)
    tracer = (
        tracer_provider.get_tracer("broker.server")
        if tracer_provider is not None
        else trace.get_tracer("broker.server")
    )
    limiter = ConcurrencyLimiter(max_concurrent_rpcs)
    tracing = TracingInterceptor(
        tracer, metrics.get_meter("broker.server", meter_provider=meter_provider)
    )
    server = grpc.aio.server(
        interceptors=[limiter, tracing],
        options=server_options(
            max_message_bytes=max_message_bytes,
            max_concurrent_rpcs=max_concurrent_rpcs,
            max_metadata_bytes=max_metadata_bytes,
            handshake_timeout=handshake_timeout,
        ),
    )
    servicer = TokenBrokerServicer(
        broker=broker,
        logins=logins,
        policy=policy,
        max_deadline=max_deadline,
        audit=audit,
        cn_identities=cn_identities,
    )
    broker_pb2_grpc.add_TokenBrokerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection:
        enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
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
    tracing.bound(bind, port)
    await server.start()
    running = RunningServer(
        server=server, port=port, health=health_servicer, policy=policy, limiter=limiter
    )
    policy.start()
    await running.set_serving(True)
    return running
