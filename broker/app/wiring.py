"""``broker serve``: wire the concrete parts from :class:`broker.config.Settings` and run them.

The one place that knows every implementation. Start order: key store and self-test (fail
closed, TEST-CATALOGUE D11) -> sealer -> grant store -> OAuth client -> token core (crash
recovery, background refresher) -> login service -> HTTPS listener -> gRPC listener (SERVING).
While the HSM is DOWN (TEST-CATALOGUE D02, D03) the broker service reports NOT_SERVING in gRPC
health and SERVING again once the probe recovers it (F08); warm-cache tokens are still served.
Stop order (SIGTERM/SIGINT, J05): NOT_SERVING -> gRPC drain -> token core stop (in-flight
refreshes finish persisting) -> HTTPS listener -> store -> HTTP client -> key store ->
telemetry flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import httpx
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace

from broker.app.identities import open_identity_signers
from broker.app.machine import ensure_machine_grants, machine_source, machine_specs
from broker.audit.sinks import (
    AuditSink,
    FanoutAuditSink,
    FileAuditSink,
    LogAuditSink,
    MeterFailureObserver,
)
from broker.audit.trail import AuditTrail
from broker.backoff import BackoffPolicy
from broker.ceremony.selftest import run_selftest
from broker.clock import Clock, SystemClock
from broker.config import Settings
from broker.credentials.expiry import credential_gauge
from broker.credentials.store import credential_path
from broker.errors import ConfigError
from broker.keys.api import Sealer, Signer
from broker.keys.didkey import public_key_from_did
from broker.keys.health import PROBE_BACKOFF, HsmHealth, HsmState
from broker.keys.kid import with_kid_format
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.uri import parse_key_uri
from broker.login import LoginService
from broker.oauth.client import OAuthClient
from broker.oauth.config import ClientConfig
from broker.oauth.skew import SkewMonitor
from broker.server.app import RunningServer, ServerTlsReloader, start_server
from broker.server.policy import PolicyHolder
from broker.telemetry import instruments
from broker.telemetry.metrics import BrokerMetrics
from broker.telemetry.observer import MetricsObserver
from broker.telemetry.signer import MeteredSigner
from broker.tokens.broker import TokenBroker
from broker.tokens.emergency import EmergencyVault
from broker.tokens.observer import NullObserver
from broker.tokens.settings import BackgroundPolicy, Identities, RefreshPolicy, Reporting
from broker.tokens.stores.deployment import DeploymentIdentity
from broker.tokens.stores.due import DEFAULT_DUE_RULE, DueRule
from broker.tokens.stores.identities import IdentityRefresher, LedgerStore
from broker.tokens.stores.postgres_driver import require_postgres_driver
from broker.tokens.stores.sqlite import SqliteGrantStore
from broker.web.app import create_app
from broker.web.jwks import JwksEndpoint, StaticKeys
from broker.web.links import BrowserLinks, LinkedLogins
from broker.web.server import TlsFiles, WebServer

log = logging.getLogger("broker.service")

DRAIN_GRACE_SECONDS = 10.0


class HsmServingReporter:
    """Mirrors the HSM state into gRPC health (F08): DOWN -> NOT_SERVING, UP -> SERVING.

    HSM listeners run on worker threads; they only wake this task, which reads the current state,
    so the last state always wins.
    """

    def __init__(self, health: HsmHealth, server: RunningServer) -> None:
        self._health = health
        self._server = server
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._remove: Callable[[], None] | None = None
        self.applied: list[HsmState] = []  # states written to gRPC health, in order

    def _on_change(self, _state: HsmState) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._changed.set)

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            state = self._health.state
            await self._server.set_serving(state is HsmState.UP)
            self.applied.append(state)
            log.info("gRPC health follows the HSM: %s", state.value)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._remove = self._health.add_listener(self._on_change)
        self._task = self._loop.create_task(self._run(), name="hsm-serving")
        if self._health.state is not HsmState.UP:
            self._changed.set()

    async def stop(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class PersistenceHealthLog:
    """G04: turns the token core's unpersisted-result signal into DEGRADED / OK log lines.
    gRPC health is left alone: warm tokens keep being served."""

    def __init__(self) -> None:
        self.degraded = False

    def unpersisted_changed(self, grant_ids: frozenset[str]) -> None:
        if grant_ids and not self.degraded:
            log.error(
                "health DEGRADED: the grant store failed to write a new refresh token "
                "(kept in memory, retried before the next refresh)",
                extra={"unpersisted_grants": sorted(grant_ids)},
            )
        elif not grant_ids and self.degraded:
            log.warning("health OK: every refresh result is in the grant store again")
        self.degraded = bool(grant_ids)


def resilience_gauges(
    meter_provider: otel_metrics.MeterProvider | None,
    skew: SkewMonitor,
    broker: TokenBroker,
    *,
    hsm: HsmHealth | None = None,
) -> None:
    """``broker.as.clock_skew`` (C09), ``broker.tokens.unpersisted_grants`` (G04, > 0:
    DEGRADED), the outage budget (``broker.grants.outage_budget``,
    ``broker.grants.last_retry_window``) and, given the probe, ``broker.hsm.up`` (1 up, 0 down)."""
    meter = otel_metrics.get_meter("broker.service", meter_provider=meter_provider)
    instruments.create(
        meter, instruments.AS_CLOCK_SKEW, callbacks=[instruments.single_value(lambda: skew.offset)]
    )
    instruments.create(
        meter,
        instruments.UNPERSISTED_GRANTS,
        callbacks=[instruments.single_value(lambda: len(broker.unpersisted_grants))],
    )
    instruments.create(
        meter, instruments.OUTAGE_BUDGET, callbacks=[instruments.single_value(broker.outage_budget)]
    )
    instruments.create(
        meter,
        instruments.LAST_RETRY_WINDOW,
        callbacks=[instruments.single_value(broker.grants_in_last_retry_window)],
    )
    if hsm is not None:
        probe = hsm
        instruments.create(
            meter,
            instruments.HSM_UP,
            callbacks=[instruments.single_value(lambda: int(probe.state is HsmState.UP))],
        )


@dataclass
class Running:
    """The started service; ``stop()`` shuts it down in order."""

    settings: Settings
    did: str
    grpc: RunningServer
    web: WebServer
    broker: TokenBroker
    logins: LoginService
    client: OAuthClient
    hsm: HsmHealth | None = None
    hsm_reporter: HsmServingReporter | None = None
    _closers: list[tuple[str, Callable[[], object]]] = field(default_factory=list, repr=False)

    @property
    def grpc_port(self) -> int:
        return self.grpc.port

    async def stop(self) -> None:
        if self.hsm_reporter is not None:
            await self.hsm_reporter.stop()
        await self.grpc.set_serving(False)
        await self.grpc.stop(DRAIN_GRACE_SECONDS)
        await self.grpc.policy.stop()
        await self.broker.stop()
        await self.web.stop()
        for name, closer in reversed(self._closers):
            try:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("closing %s failed", name)


def client_config(settings: Settings, did: str) -> ClientConfig:
    o = settings.oauth
    if o.client_id is not None and o.client_id != did:
        raise ConfigError(
            "[oauth].client_id differs from the did:key of the configured key "
            "(the Verifier would reject every assertion)"
        )
    return ClientConfig(
        issuer=o.issuer,
        client_id=did,
        redirect_uri=o.redirect_uri,
        scope=o.scope,
        use_pkce=o.use_pkce,
        use_par=o.use_par,
        dome_compat=o.dome_compat,
        clock_skew=o.clock_skew,
        http_timeout=o.http_timeout,
        max_response_bytes=o.max_response_bytes,
        max_jwt_bytes=o.max_jwt_bytes,
        allow_http_issuer=o.allow_insecure_http,
        allowed_endpoint_origins=frozenset(o.allowed_endpoint_origins),
    )


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The outbound client to the AS: TLS verified (extra CA optional), no redirects followed."""
    context = ssl.create_default_context()
    if settings.oauth.ca_file is not None:
        context.load_verify_locations(cafile=str(settings.oauth.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return httpx.AsyncClient(
        verify=context,
        follow_redirects=False,
        timeout=httpx.Timeout(settings.oauth.http_timeout),
        trust_env=False,
    )


def deployment_identity(config: ClientConfig, did: str) -> DeploymentIdentity:
    """The identity a grant store is bound to: the OAuth client's issuer and client_id, our did."""
    return DeploymentIdentity(issuer=config.issuer, client_id=config.client_id, did=did)


async def open_store(
    settings: Settings,
    sealer: Sealer,
    clock: Clock,
    identity: DeploymentIdentity | None,
    *,
    record_identity: bool = True,
    due_rule: DueRule = DEFAULT_DUE_RULE,
) -> LedgerStore:
    """Open the configured store bound to ``identity`` (refuses another deployment's store:
    DeploymentMismatch; an existing file or schema that is not a store: StoreUnusable).
    ``due_rule``: how the store computes a grant's next due time (serve: the token core's
    configured schedule, so the background pass reads only the due grants)."""
    s = settings.store
    if s.kind == "postgres":
        if s.dsn is None:
            raise ConfigError("[store].dsn is required for the postgres store")
        require_postgres_driver()  # psycopg is the optional `postgres` extra
        from broker.tokens.stores.postgres import PostgresGrantStore  # noqa: PLC0415

        return await PostgresGrantStore.connect(
            s.dsn,
            sealer,
            clock,
            schema=s.schema,
            identity=identity,
            record_identity=record_identity,
            due_rule=due_rule,
        )
    if s.path is None:
        raise ConfigError("[store].path is required for the sqlite store")
    return await SqliteGrantStore.connect(
        str(s.path),
        sealer,
        clock,
        identity=identity,
        record_identity=record_identity,
        due_rule=due_rule,
    )


def hsm_health(settings: Settings, clock: Clock) -> HsmHealth:
    """The :class:`HsmHealth` of ``[key]``: busy retries, the per-call bound (which also bounds
    the wait for the HSM lock, D07), and the probe backoff (x1.5 from ``probe_initial`` up to
    ``probe_max``)."""
    k = settings.key
    return HsmHealth(
        clock=clock,
        busy_retries=k.busy_retries,
        op_timeout=k.sign_timeout,
        probe_backoff=BackoffPolicy(
            initial=k.probe_initial, factor=PROBE_BACKOFF.factor, maximum=k.probe_max
        ),
    )


def open_key(
    settings: Settings, clock: Clock, health: HsmHealth | None = None
) -> tuple[Pkcs11KeyStore, Signer, str, Sealer]:
    """Open the token, self-test the client key (fail closed) and find the sealing key. The
    signer names the key by ``[oauth].kid_format``."""
    ref = parse_key_uri(settings.key.uri)
    if ref.object is None:
        raise ConfigError("[key].uri must name the key with object=<label>")
    keystore = Pkcs11KeyStore.from_ref(ref, health=health)
    try:
        info = keystore.get(ref.object)
        key_signer = keystore.signer(ref.object)
        run_selftest(key_signer, info, clock=clock)
        signer = with_kid_format(key_signer, info.public_key, settings.oauth.kid_format)
        if settings.key.sealing_key_label is None:
            raise ConfigError("[key].sealing_key_label is required (tokens are sealed at rest)")
        sealer = keystore.sealer(settings.key.sealing_key_label)
    except BaseException:
        keystore.close()
        raise
    return keystore, signer, info.did, sealer


def jwks_endpoint(
    settings: Settings, did: str, other_dids: Sequence[str] = ()
) -> JwksEndpoint | None:
    """The ``[web].jwks_path`` route publishing the client key, then the other identities'
    keys of a rotation in progress (None when turned off)."""
    w = settings.web
    if w.jwks_path is None:
        return None
    return JwksEndpoint(
        StaticKeys(tuple(public_key_from_did(d) for d in (did, *other_dids))),
        kid_format=settings.oauth.kid_format,
        path=w.jwks_path,
        max_age=w.jwks_max_age,
    )


def audit_trail(
    settings: Settings,
    clock: Clock,
    *,
    meter_provider: otel_metrics.MeterProvider | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> tuple[AuditTrail, list[FileAuditSink]]:
    """The runtime audit trail from ``[audit]`` (see :mod:`broker.audit.trail`):
    the log file (plus its mirror, fanned out with ``require``), else the ``broker.audit``
    logger. Returns the file sinks too, to close on stop."""
    a = settings.audit
    observer = MeterFailureObserver(meter_provider)
    files = [
        FileAuditSink(p, clock=clock, timeout=a.write_timeout, tracer_provider=tracer_provider)
        for p in (a.path, a.mirror_path)
        if p is not None
    ]
    sink: AuditSink
    if not files:
        sink = LogAuditSink()
    elif len(files) == 1:
        sink = files[0]
    else:
        sink = FanoutAuditSink(files, require=a.require, timeout=a.write_timeout, observer=observer)
    # The trail's own bound sits just above the sinks': their timeout error names the sink.
    return AuditTrail(sink, timeout=a.write_timeout * 1.5, observer=observer), files


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
            kid_format=settings.oauth.kid_format,
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
        w = settings.web
        tls = TlsFiles(str(w.tls_cert), str(w.tls_key)) if w.tls_cert and w.tls_key else None
        # Callers hand users a start link on the listener: "/" then tells an abandoned login.
        links = BrowserLinks(w.public_base_url.rstrip("/"), clock)
        web = WebServer(
            create_app(
                logins,
                redirect_uri=config.redirect_uri,
                post_login_url=w.post_login_url,
                tracer_provider=tracer_provider,
                jwks=jwks_endpoint(settings, did, [o.recorded.identity.did for o in others]),
                links=links,
            ),
            host=w.host,
            port=w.port,
            tls=tls,
        )
        await web.start()
        stack.push_async_callback(web.stop)
        g = settings.grpc
        policy = PolicyHolder(g.policy_file)
        grpc_tls = ServerTlsReloader(g.server_cert, g.server_key, g.client_ca)  # rotation: E09
        grpc_server = await start_server(
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


@contextlib.asynccontextmanager
async def running(settings: Settings, **kwargs: object) -> AsyncIterator[Running]:
    service = await start(settings, **kwargs)  # type: ignore[arg-type]
    try:
        yield service
    finally:
        await service.stop()


async def serve_until_signalled(settings: Settings, *, metrics: BrokerMetrics | None) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop in order."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = await start(settings, metrics=metrics)
    print(
        f"broker serving: grpc port {service.grpc_port}, https port {service.web.port}", flush=True
    )
    try:
        await stop.wait()
        log.info("signal received: draining")
    finally:
        await service.stop()
