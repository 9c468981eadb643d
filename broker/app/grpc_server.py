"""The gRPC listener of ``broker serve`` from ``[grpc]``: the one module of the composition
root that imports a gRPC-loading module (``broker.server.app``)."""

from __future__ import annotations

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace

from broker.audit.trail import AuditTrail
from broker.config import Settings
from broker.login import LoginService
from broker.server.app import RunningServer, ServerTlsReloader, start_server
from broker.server.policy import PolicyHolder
from broker.tokens.broker import TokenBroker
from broker.web.links import BrowserLinks, LinkedLogins


async def start_grpc(
    settings: Settings,
    broker: TokenBroker,
    logins: LoginService,
    links: BrowserLinks,
    *,
    audit: AuditTrail,
    tracer_provider: trace.TracerProvider | None,
    meter_provider: otel_metrics.MeterProvider | None,
) -> RunningServer:
    """Start the listener over mTLS (certificates reloaded live, E09) and report SERVING."""
    g = settings.grpc
    policy = PolicyHolder(g.policy_file)
    grpc_tls = ServerTlsReloader(g.server_cert, g.server_key, g.client_ca)  # rotation: E09
    return await start_server(
        broker=broker,
        logins=LinkedLogins(logins, links),
        policy=policy,
        bind=g.bind,
        server_cert_pem=grpc_tls.server_cert_pem,
        server_key_pem=g.server_key.read_bytes(),
        client_ca_pem=grpc_tls.client_ca_pem,
        tls_reloader=grpc_tls,
        max_message_bytes=g.max_message_bytes,
        max_concurrent_rpcs=g.max_concurrent_rpcs,
        reflection=g.reflection,
        cn_identities=g.cn_identities,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        audit=audit,
    )
