"""``broker serve``: wire the concrete parts from :class:`broker.config.Settings` and start them.

The one place that knows every implementation. Start order: key store and self-test (fail
closed, TEST-CATALOGUE D11) -> sealer -> grant store -> OAuth client -> token core (crash
recovery, background refresher) -> login service -> HTTPS listener -> gRPC listener (SERVING),
then gRPC health follows the HSM (:mod:`broker.app.hsm`). The stop order is
:meth:`broker.app.running.Running.stop`; :mod:`broker.app.serve` runs it until signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace

from broker.app.audit import audit_trail
from broker.app.grpc_server import start_grpc
from broker.app.health import PersistenceHealthLog, resilience_gauges
from broker.app.hsm import HsmServingReporter, hsm_health
from broker.app.identities import open_identity_signers
from broker.app.keys import open_key
from broker.app.machine import ensure_machine_grants, machine_source, machine_specs
from broker.app.oauth import client_config, http_client
from broker.app.running import Running
from broker.app.settings import kid_format
from broker.app.stores import deployment_identity, open_store
from broker.app.web import web_server
from broker.clock import Clock, SystemClock
from broker.config import Settings
from broker.credentials.expiry import credential_gauge
from broker.credentials.store import credential_path
from broker.keys.uri import parse_key_uri
from broker.login import LoginService
from broker.oauth.client import OAuthClient
from broker.oauth.skew import SkewMonitor
from broker.telemetry.metrics import BrokerMetrics
from broker.telemetry.observer import MetricsObserver
from broker.telemetry.signer import MeteredSigner
from broker.tokens.broker import TokenBroker
from broker.tokens.emergency import EmergencyVault
from broker.tokens.observer import NullObserver
from broker.tokens.settings import BackgroundPolicy, Identities, RefreshPolicy, Reporting
from broker.tokens.stores.identities import IdentityRefresher
from broker.web.links import BrowserLinks

# The composition root's log lines keep the name they had in broker/service.py.
log = logging.getLogger("broker.service")


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
    closers: list[tuple[str, Callable[[], object]]] = []
    stack = contextlib.AsyncExitStack()
    try:
        audit, audit_files = audit_trail(
            settings, clock, meter_provider=meter_provider, tracer_provider=tracer_provider
        )
        for audit_file in audit_files:
            stack.callback(audit_file.close)
            closers.append((f"audit sink {audit_file.name}", audit_file.close))
        hsm = hsm_health(settings, clock)
        keystore, signer, did, sealer = await asyncio.to_thread(open_key, settings, clock, hsm)
        if metrics is not None:
            signer = MeteredSigner(signer, metrics, clock)
        stack.callback(keystore.close)
        closers.append(("key store", keystore.close))
        config = client_config(settings, did)
        t = settings.tokens
        refresh_policy = RefreshPolicy(
            threshold=t.refresh_threshold,
            fraction=t.refresh_fraction,
            retry_margin=t.refresh_retry_margin,
            lifetime=settings.oauth.refresh_token_lifetime,
            min_serve_ttl=t.min_serve_ttl,
        )
        store = await open_store(
            settings,
            sealer,
            clock,
            deployment_identity(config, did),
            due_rule=refresh_policy.schedule(),
        )
        stack.push_async_callback(store.close)
        closers.append(("grant store", store.close))
        http = http_client(settings)
        stack.push_async_callback(http.aclose)
        closers.append(("http client", http.aclose))
        skew = SkewMonitor(
            clock,
            alarm_threshold=settings.oauth.clock_skew,
            compensate=settings.oauth.compensate_skew,
        )
        client = OAuthClient(
            config, http, signer, clock, tracer_provider=tracer_provider, skew=skew
        )
        # Key rotation: the other recorded identities refresh their own grants with their keys.
        others = await asyncio.to_thread(
            open_identity_signers,
            keystore,
            parse_key_uri(settings.key.uri).token,
            await store.identities(),
            deployment_identity(config, did),
            config,
            kid_format=kid_format(settings),
            clock=clock,
        )
        other_refreshers = [
            IdentityRefresher(
                o.recorded.identity,
                OAuthClient(
                    o.config,
                    http,
                    o.signer if metrics is None else MeteredSigner(o.signer, metrics, clock),
                    clock,
                    tracer_provider=tracer_provider,
                    skew=skew,
                ),
            )
            for o in others
        ]
        emergency_dir = settings.store.emergency_dir
        if emergency_dir is None:
            log.warning(
                "no [store].emergency_dir: a refresh token the store fails to write is lost at exit"
            )
        broker = TokenBroker(
            store,
            client,
            clock,
            refresh=refresh_policy,
            background=BackgroundPolicy(interval=t.background_interval),
            reporting=Reporting(
                observer=MetricsObserver(metrics) if metrics is not None else NullObserver(),
                tracer_provider=tracer_provider,
                audit=audit,
                persistence=PersistenceHealthLog(),
            ),
            identities=Identities(deployment_identity(client.config, did), other_refreshers),
            emergency=EmergencyVault(emergency_dir, sealer, clock)
            if emergency_dir is not None
            else None,
            machine=machine_source(settings, client, signer, clock),
        )
        resilience_gauges(meter_provider, skew, broker, hsm=hsm)
        credential_file = credential_path(settings.credential.path, settings.audit.path)
        if credential_file is not None:  # broker.credential.expiry (none while none stored)
            credential_gauge(meter_provider, credential_file, clock)
        await broker.start()
        stack.push_async_callback(broker.stop)
        await ensure_machine_grants(
            broker,
            machine_specs(settings, issuer=config.issuer, client_id=config.client_id),
        )
        logins = LoginService(
            client,
            config,
            signer,
            broker,
            clock,
            public_base_url=settings.web.public_base_url.rstrip("/"),
            login_ttl=settings.oauth.login_ttl,
            audit=audit,
            store=store,  # logins in flight live in the grant store: any replica completes them
        )
        # Callers hand users a start link on the listener: "/" then tells an abandoned login.
        links = BrowserLinks(settings.web.public_base_url.rstrip("/"), clock)
        web = web_server(
            settings,
            logins,
            config,
            links,
            did=did,
            other_dids=[o.recorded.identity.did for o in others],
            tracer_provider=tracer_provider,
        )
        await web.start()
        stack.push_async_callback(web.stop)
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
        await stack.aclose()
        raise
    stack.pop_all()
    log.info(
        "broker serving",
        extra={"did": did, "grpc_port": grpc_server.port, "web_port": web.port},
    )
    return Running(
        settings=settings,
        did=did,
        grpc=grpc_server,
        web=web,
        broker=broker,
        logins=logins,
        client=client,
        hsm=hsm,
        hsm_reporter=reporter,
        _closers=closers,
    )
