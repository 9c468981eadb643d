"""``broker serve``: wire the concrete parts from :class:`broker.config.Settings` and start them.

The one place that knows every implementation. Start order: key store and self-test (fail
closed, TEST-CATALOGUE D11) -> sealer -> grant store -> OAuth client -> token core (built by
:mod:`broker.app.tokens`; crash recovery, background refresher) -> login service -> HTTPS listener -> gRPC listener (SERVING),
then gRPC health follows the HSM (:mod:`broker.app.hsm`). The stop order is
:meth:`broker.app.running.Running.stop`; :mod:`broker.app.serve` runs it until signalled.
"""

from __future__ import annotations

import asyncio
import logging

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace

from broker.app.audit import audit_trail
from broker.app.grpc_server import start_grpc
from broker.app.health import resilience_gauges, store_gauges
from broker.app.hsm import HsmServingReporter, hsm_health
from broker.app.keys import open_key
from broker.app.machine import ensure_machine_grants, machine_specs
from broker.app.resources import Resources
from broker.app.running import Running
from broker.app.tokens import ClientKey, Instruments, build_token_core
from broker.app.web import web_server
from broker.clock import Clock, SystemClock
from broker.config import Settings
from broker.credentials.expiry import credential_gauge
from broker.credentials.store import credential_path
from broker.login import LoginService, LoginSettings
from broker.telemetry.metrics import BrokerMetrics
from broker.telemetry.signer import MeteredSigner
from broker.web.links import BrowserLinks

# The composition root's log lines keep the name they had in broker/service.py.
log = logging.getLogger("broker.service")


def login_settings(settings: Settings) -> LoginSettings:
    """The login service's settings: its base URL is the HTTPS listener's public one, a login
    lives ``[oauth].login_ttl``; the limits (pending logins, retention, restarts) keep their
    defaults."""
    return LoginSettings(
        public_base_url=settings.web.public_base_url.rstrip("/"),
        login_ttl=settings.oauth.login_ttl,
    )


async def start(
    settings: Settings,
    *,
    clock: Clock | None = None,
    metrics: BrokerMetrics | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: otel_metrics.MeterProvider | None = None,
) -> Running:
    """Start every listener; raises (after undoing what started) when anything fails."""
    clock = clock or SystemClock()
    resources = Resources()
    try:
        audit, audit_files = audit_trail(
            settings, clock, meter_provider=meter_provider, tracer_provider=tracer_provider
        )
        for audit_file in audit_files:
            resources.owned(f"audit sink {audit_file.name}", audit_file.close)
        hsm = hsm_health(settings, clock)
        keystore, signer, did, sealer = await asyncio.to_thread(open_key, settings, clock, hsm)
        resources.owned("key store", keystore.close)
        if metrics is not None:
            signer = MeteredSigner(signer, metrics, clock)
        core = await build_token_core(
            settings,
            ClientKey(keystore, signer, did, sealer),
            clock,
            Instruments(metrics, tracer_provider, audit),
            resources,
        )
        broker, config = core.broker, core.config
        resilience_gauges(meter_provider, core.skew, broker, hsm=hsm)
        credential_file = credential_path(settings.credential.path, settings.audit.path)
        if credential_file is not None:  # broker.credential.expiry (none while none stored)
            credential_gauge(meter_provider, credential_file, clock)
        await broker.start()
        resources.on_failure(broker.stop)
        await ensure_machine_grants(
            broker,
            machine_specs(settings, issuer=config.issuer, client_id=config.client_id),
        )
        logins = LoginService(
            core.client,
            config,
            signer,
            broker,
            clock,
            settings=login_settings(settings),
            audit=audit,
            store=core.store,  # logins in flight live in the grant store: any replica completes them
        )
        gauges = store_gauges(metrics, core.store, logins.pending_count)
        # Closed before the store (closers run last first): a late export reports nothing.
        resources.owned_async("store gauges", gauges.detach)
        # Callers hand users a start link on the listener: "/" then tells an abandoned login.
        links = BrowserLinks(settings.web.public_base_url.rstrip("/"), clock)
        web = web_server(
            settings,
            logins,
            config,
            links,
            did=did,
            other_dids=core.other_dids,
            tracer_provider=tracer_provider,
        )
        await web.start()
        resources.on_failure(web.stop)
        grpc_server = await start_grpc(
            settings,
            broker,
            logins,
            links,
            audit=audit,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        reporter = HsmServingReporter(hsm, grpc_server)
        reporter.start()
    except BaseException:
        await resources.unwind()
        raise
    resources.keep()
    log.info(
        "broker serving",
        extra={"did": did, "grpc_port": grpc_server.port, "web_port": web.port},
    )
    return Running(
        did=did,
        grpc=grpc_server,
        web=web,
        broker=broker,
        hsm_reporter=reporter,
        _closers=resources.closers,
    )
