"""Run every doctor check in order and collect the results; nothing here raises.

Order and dependencies: configuration first (nothing else runs without valid settings), then
the HSM chain, the authorization server (discovery first; the JWKS and the DOME pre-flight need
it, the pre-flight also needs our did), TLS material, the grant store and its key-rotation
state (``store.rotation``, which skips when the store cannot be read). A check that cannot
run because another failed is reported as "skip" with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from broker.app.oauth import http_client
from broker.clock import Clock, SystemClock
from broker.config import Settings
from broker.doctor import authserver, config_checks, credential, hsm, rotation, store, tls
from broker.doctor.result import DEFAULT_WARN_DAYS, CheckResult, Status, failed, skip, warn

ALL_NAMES = (
    "config.load",
    "config.files",
    "config.policy",
    "config.kid",
    *hsm.NAMES,
    "as.discovery",
    "as.endpoints",
    "as.jwks",
    "as.dome_did",
    "as.clock_skew",
    "tls.web",
    "tls.grpc_server",
    "tls.grpc_client_ca",
    "store",
    rotation.NAME,
    credential.NAME,
)


@dataclass(frozen=True)
class DoctorOptions:
    cert_warn_days: float = DEFAULT_WARN_DAYS
    skew_warn_seconds: float = authserver.SKEW_WARN_SECONDS
    pg_schema: str = "broker"  # the schema serve uses; tests give their own
    prepared_warn_days: float = rotation.DEFAULT_PREPARED_WARN_DAYS


def _crashed(names: Sequence[str], exc: BaseException) -> list[CheckResult]:
    """A bug in a check group: the first check fails (by exception type), the rest skip."""
    return [failed(names[0], exc)] + [skip(n, f"{names[0]} crashed") for n in names[1:]]


async def _guard(
    names: Sequence[str], run: Callable[[], Awaitable[list[CheckResult]]]
) -> list[CheckResult]:
    try:
        return await run()
    except Exception as exc:  # a check must never take the report down
        return _crashed(names, exc)


async def run_doctor(
    config_path: Path,
    *,
    http: httpx.AsyncClient | None = None,
    clock: Clock | None = None,
    options: DoctorOptions | None = None,
    tracer_provider: TracerProvider | None = None,
) -> list[CheckResult]:
    """Every check's result, in :data:`ALL_NAMES` order.

    ``http`` is the client to the AS (default: the one serve builds, closed afterwards);
    ``clock`` defaults to the system clock.
    """
    clock = clock or SystemClock()
    options = options or DoctorOptions()
    tracer = trace.get_tracer("broker.doctor", tracer_provider=tracer_provider)
    with tracer.start_as_current_span("doctor.run") as span:
        results = await _run(config_path, http, clock, options)
        for status in Status:
            span.set_attribute(
                f"doctor.{status.value}", sum(1 for r in results if r.status is status)
            )
        return results


async def _run(
    config_path: Path, http: httpx.AsyncClient | None, clock: Clock, options: DoctorOptions
) -> list[CheckResult]:
    loaded, settings = config_checks.load(config_path)
    if settings is None:
        return [loaded] + [skip(n, "configuration invalid") for n in ALL_NAMES[1:]]
    results = [
        loaded,
        config_checks.files(settings),
        config_checks.policy(settings),
        _safe("config.kid", lambda: config_checks.kid(settings)),
    ]

    outcome = hsm.HsmOutcome()

    async def run_hsm() -> list[CheckResult]:
        nonlocal outcome
        outcome = await asyncio.to_thread(hsm.check_hsm, settings, clock)
        return outcome.results

    results += await _guard(hsm.NAMES, run_hsm)
    results += await _guard(
        ("as.discovery", "as.endpoints", "as.jwks", "as.dome_did", "as.clock_skew"),
        lambda: _authserver(settings, outcome.did, http, clock, options),
    )
    results += [
        _safe("tls.web", lambda: _web_tls(settings, clock, options)),
        _safe(
            "tls.grpc_server",
            lambda: tls.check_pair(
                "tls.grpc_server",
                settings.grpc.server_cert,
                settings.grpc.server_key,
                clock,
                options.cert_warn_days,
            ),
        ),
        _safe(
            "tls.grpc_client_ca",
            lambda: tls.check_ca_bundle(
                "tls.grpc_client_ca", settings.grpc.client_ca, clock, options.cert_warn_days
            ),
        ),
    ]
    results += await _guard(
        ("store",),
        lambda: _one(
            store.check_store(settings, clock, pg_schema=options.pg_schema, did=outcome.did)
        ),
    )
    results += await _guard(
        (rotation.NAME,),
        lambda: _one(
            rotation.check_rotation(
                settings,
                clock,
                pg_schema=options.pg_schema,
                did=outcome.did,
                prepared_warn_days=options.prepared_warn_days,
            )
        ),
    )
    results.append(
        _safe(
            credential.NAME,
            lambda: credential.check_credential(
                credential.configured_path(settings), outcome.did, clock, options.cert_warn_days
            ),
        )
    )
    return results


async def _one(check: Awaitable[CheckResult]) -> list[CheckResult]:
    return [await check]


def _safe(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    try:
        return check()
    except Exception as exc:  # a check must never take the report down
        return failed(name, exc)


def _web_tls(settings: Settings, clock: Clock, options: DoctorOptions) -> CheckResult:
    w = settings.web
    if w.tls_cert is None or w.tls_key is None:
        return warn(
            "tls.web",
            "no [web].tls_cert: the listener speaks plain HTTP (TLS must end in front of it)",
        )
    return tls.check_pair("tls.web", w.tls_cert, w.tls_key, clock, options.cert_warn_days)


async def _authserver(
    settings: Settings,
    did: str | None,
    http: httpx.AsyncClient | None,
    clock: Clock,
    options: DoctorOptions,
) -> list[CheckResult]:
    config = authserver.as_config(settings, did)
    client = http if http is not None else http_client(settings)
    try:
        found = await authserver.discovery(client, config, clock)
        results = [found.result, await authserver.endpoints(client, config, found)]
        if found.metadata is None:
            results += [skip(n, "discovery failed") for n in ("as.jwks", "as.dome_did")]
        else:
            results.append(await authserver.jwks(client, found.cache, config, clock))
            if did is None:
                results.append(skip("as.dome_did", "our did is unknown (client key not read)"))
            else:
                results.append(await authserver.dome_did(client, config, did))
        if found.reachable:
            results.append(
                await authserver.clock_skew(
                    client, config, clock, warn_above=options.skew_warn_seconds
                )
            )
        else:
            results.append(skip("as.clock_skew", "the AS is unreachable"))
        return results
    finally:
        if http is None:
            await client.aclose()
