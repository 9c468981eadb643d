"""Wiring of the gRPC server: mTLS credentials, limits, health, reflection, tracing.

``start_server`` returns a :class:`RunningServer` bound to the requested address (port 0 picks a
free port). Client certificates are required and checked against ``client_ca_pem`` by gRPC
(TEST-CATALOGUE E01-E03); the servicer then applies the identity policy (E04, E05). The parts
live in :mod:`broker.server.limits` (resource limits, overload, the callers' retry policy) and
:mod:`broker.server.tls` (credentials, certificate reload; the rules for the files in
:mod:`broker.server.certificates`); this module is the one the composition root uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import metrics, trace

from broker.audit.trail import AuditTrail
from broker.errors import ConfigError
from broker.server.certificates import check_client_ca_bundle
from broker.server.gen.broker.v1 import broker_pb2_grpc
from broker.server.limits import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_METADATA_BYTES,
    ConcurrencyLimiter,
    client_retry_service_config,
    server_options,
)
from broker.server.policy import PolicyHolder
from broker.server.ports import LoginService, TokenService
from broker.server.reflection import enable_reflection
from broker.server.servicer import DEFAULT_MAX_DEADLINE, SERVICE_NAME, TokenBrokerServicer
from broker.server.tls import ServerTlsReloader, server_credentials
from broker.server.tracing import TracingInterceptor

__all__ = [
    "SERVICE_NAME",
    "RunningServer",
    "ServerTlsReloader",
    "client_retry_service_config",
    "start_server",
]


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
        credentials = server_credentials(server_cert_pem, server_key_pem, client_ca_pem)
    try:
        port = server.add_secure_port(bind, credentials)
    except RuntimeError:  # grpcio raises when no address could be bound
        port = 0
    if port == 0:
        raise ConfigError(f"the gRPC server could not bind {bind} (address in use?)")
    tracing.bound(bind, port)
    await server.start()
    running = RunningServer(
        server=server, port=port, health=health_servicer, policy=policy, limiter=limiter
    )
    policy.start()
    await running.set_serving(True)
    return running
