"""The token core of ``broker serve``, built from the settings and the ports :func:`start` opened
before it (the client key, the runtime trail): the grant store, the HTTP client, the OAuth client
(and one per other identity of a key rotation, each with its own key) and the
:class:`TokenBroker` over them. Built, not started: :func:`broker.app.wiring.start` starts it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from opentelemetry import trace

from broker.app.health import PersistenceHealthLog
from broker.app.identities import open_identity_signers
from broker.app.machine import machine_source
from broker.app.oauth import client_config, http_client
from broker.app.resources import Resources
from broker.app.settings import kid_format
from broker.app.stores import deployment_identity, open_store
from broker.audit.trail import AuditTrail
from broker.clock import Clock
from broker.config import Settings
from broker.keys.api import KeyStore, Sealer, Signer
from broker.keys.uri import parse_key_uri
from broker.oauth.client import ClientReporting, OAuthClient
from broker.oauth.config import ClientConfig
from broker.oauth.skew import SkewMonitor
from broker.telemetry.metrics import BrokerMetrics
from broker.telemetry.observer import AsErrorMetrics, MetricsObserver
from broker.telemetry.signer import MeteredSigner
from broker.tokens.broker import TokenBroker
from broker.tokens.emergency import EmergencyVault
from broker.tokens.observer import NullObserver
from broker.tokens.settings import BackgroundPolicy, Identities, RefreshPolicy, Reporting
from broker.tokens.stores.identities import IdentityRefresher, LedgerStore

# The composition root's log lines keep the name they had in broker/service.py.
log = logging.getLogger("broker.service")


@dataclass(frozen=True)
class ClientKey:
    """The opened client key: its store, its signer (metered when metrics are on), its did and
    the sealing key of the tokens at rest."""

    keystore: KeyStore
    signer: Signer
    did: str
    sealer: Sealer


@dataclass(frozen=True)
class Instruments:
    """Where the token core reports: metrics (None: off), traces, the runtime trail."""

    metrics: BrokerMetrics | None
    tracer_provider: trace.TracerProvider | None
    audit: AuditTrail

    def metered(self, signer: Signer, clock: Clock) -> Signer:
        return signer if self.metrics is None else MeteredSigner(signer, self.metrics, clock)


@dataclass(frozen=True)
class TokenCore:
    """What the later steps of :func:`broker.app.wiring.start` take from the token core."""

    broker: TokenBroker
    client: OAuthClient
    config: ClientConfig
    store: LedgerStore
    skew: SkewMonitor
    other_dids: tuple[str, ...]


def refresh_policy(settings: Settings) -> RefreshPolicy:
    t = settings.tokens
    return RefreshPolicy(
        threshold=t.refresh_threshold,
        fraction=t.refresh_fraction,
        retry_margin=t.refresh_retry_margin,
        lifetime=settings.oauth.refresh_token_lifetime,
        min_serve_ttl=t.min_serve_ttl,
    )


async def build_token_core(
    settings: Settings,
    key: ClientKey,
    clock: Clock,
    instruments: Instruments,
    resources: Resources,
) -> TokenCore:
    """Open the grant store and the HTTP client (both owned by ``resources``), build the OAuth
    clients of every serving identity and the :class:`TokenBroker` over them."""
    config = client_config(settings, key.did)
    identity = deployment_identity(config, key.did)
    policy = refresh_policy(settings)
    store = await open_store(settings, key.sealer, clock, identity, due_rule=policy.schedule())
    resources.owned_async("grant store", store.close)
    http = http_client(settings)
    resources.owned_async("http client", http.aclose)
    skew = SkewMonitor(
        clock,
        alarm_threshold=settings.oauth.clock_skew,
        compensate=settings.oauth.compensate_skew,
    )
    tracer_provider = instruments.tracer_provider
    metrics = instruments.metrics
    reporting = ClientReporting(
        tracer_provider=tracer_provider,
        as_errors=AsErrorMetrics(metrics) if metrics is not None else None,
    )
    client = OAuthClient(config, http, key.signer, clock, skew=skew, reporting=reporting)
    # Key rotation: the other recorded identities refresh their own grants with their keys.
    others = await asyncio.to_thread(
        open_identity_signers,
        key.keystore,
        parse_key_uri(settings.key.uri).token,
        await store.identities(),
        identity,
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
                instruments.metered(o.signer, clock),
                clock,
                skew=skew,
                reporting=reporting,
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
        refresh=policy,
        background=BackgroundPolicy(
            interval=settings.tokens.background_interval,
            status_interval=settings.tokens.status_poll_interval,
        ),
        reporting=Reporting(
            observer=MetricsObserver(metrics) if metrics is not None else NullObserver(),
            tracer_provider=tracer_provider,
            audit=instruments.audit,
            persistence=PersistenceHealthLog(),
        ),
        identities=Identities(deployment_identity(client.config, key.did), other_refreshers),
        emergency=EmergencyVault(emergency_dir, key.sealer, clock)
        if emergency_dir is not None
        else None,
        machine=machine_source(settings, client, key.signer, clock),
    )
    return TokenCore(
        broker=broker,
        client=client,
        config=config,
        store=store,
        skew=skew,
        other_dids=tuple(o.recorded.identity.did for o in others),
    )
