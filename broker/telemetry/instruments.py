"""The catalogue of every metric instrument the broker exports, and its Prometheus name.

One :class:`InstrumentSpec` per instrument: the OpenTelemetry name (dotted, lower case, no unit
in the name), the instrument kind, the UCUM unit (``s``, ``ms``, ``{grant}``), the attribute keys
it is recorded with, and what it means. :mod:`broker.telemetry.metrics`, the gRPC server
interceptor, the HTTP client and the service wiring create their instruments from these specs
(:func:`create`); ``docs/telemetry.md`` lists them; the Grafana dashboard and the Prometheus
alert rules under ``deploy/`` reference them by :func:`prometheus_name`.

:func:`prometheus_name` follows the OpenTelemetry specification "Prometheus and OpenMetrics
Compatibility" (what the Collector's ``prometheus`` / ``prometheusremotewrite`` exporters do with
suffixes on): characters outside ``[a-zA-Z0-9_:]`` become ``_`` (runs collapsed); the unit is
translated (``s`` -> ``seconds``, ``ms`` -> ``milliseconds``, ``By`` -> ``bytes``, ``1`` ->
``ratio`` for gauges) and appended unless the name already ends with it, annotations in curly
braces (``{grant}``) are dropped; monotonic counters get ``_total``. Histograms are exposed as
``<name>_bucket``, ``<name>_sum`` and ``<name>_count``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.metrics import CallbackOptions, Meter, Observation

Kind = Literal["counter", "up_down_counter", "histogram", "gauge"]


@dataclass(frozen=True)
class InstrumentSpec:
    name: str
    kind: Kind
    unit: str
    attributes: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] | None = None


# Bucket boundaries (seconds). Sign: SoftHSM ~1 ms, network HSMs ~5-50 ms.
_SIGN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Refresh: one token-endpoint round trip plus an HSM signature.
_REFRESH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Remaining life of served access tokens: 0 s .. 1 h (DOME: 3600 s).
_TTL_BUCKETS = (0.0, 30.0, 60.0, 120.0, 225.0, 300.0, 600.0, 900.0, 1800.0, 2700.0, 3600.0)
# HTTP semantic conventions: the advised boundaries of http.client.request.duration (seconds).
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# rpc.server.duration is in milliseconds.
_RPC_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)

TOKEN_REQUESTS = InstrumentSpec(
    "broker.token.requests",
    "counter",
    "{request}",
    ("method", "outcome"),
    "Access-token requests served, by method and outcome",
)
CACHE_HITS = InstrumentSpec(
    "broker.token.cache.hits", "counter", "{lookup}", (), "Tokens served from cache"
)
CACHE_MISSES = InstrumentSpec(
    "broker.token.cache.misses",
    "counter",
    "{lookup}",
    (),
    "Token lookups that needed a blocking refresh",
)
REFRESH_DURATION = InstrumentSpec(
    "broker.token.refresh.duration",
    "histogram",
    "s",
    ("outcome",),
    "Duration of refresh_token grants, by outcome "
    "(refreshed, not_needed, dead, retryable, rejected, failed)",
    _REFRESH_BUCKETS,
)
SERVED_TTL = InstrumentSpec(
    "broker.token.served.time_to_expiry",
    "histogram",
    "s",
    (),
    "Remaining lifetime of access tokens handed out",
    _TTL_BUCKETS,
)
SIGN_DURATION = InstrumentSpec(
    "broker.hsm.sign.duration",
    "histogram",
    "s",
    ("mechanism",),
    "Duration of one HSM signature, by mechanism",
    _SIGN_BUCKETS,
)
SIGN_ERRORS = InstrumentSpec(
    "broker.hsm.sign.errors", "counter", "{error}", ("reason",), "Failed HSM signatures, by reason"
)
HSM_UP = InstrumentSpec(
    "broker.hsm.up",
    "gauge",
    "{hsm}",
    (),
    "1 while the HSM health probe reports the token usable, 0 while it is down",
)
AS_ERRORS = InstrumentSpec(
    "broker.as.errors",
    "counter",
    "{error}",
    ("endpoint", "error"),
    "Error answers of the authorization server (token, PAR, discovery, JWKS), by endpoint "
    "and OAuth error code or HTTP status",
)
AS_CLOCK_SKEW = InstrumentSpec(
    "broker.as.clock_skew",
    "gauge",
    "s",
    (),
    "Smoothed clock offset of the authorization server (its Date header minus our clock)",
)
PENDING_LOGINS = InstrumentSpec(
    "broker.logins.pending",
    "gauge",
    "{login}",
    (),
    "Interactive logins waiting for the user (pending, not expired), counted in the login "
    "store every replica shares",
)
REAUTH_REQUIRED = InstrumentSpec(
    "broker.grants.reauthorization_required",
    "gauge",
    "{grant}",
    (),
    "Grants that currently need a user to log in again, counted in the grant store every "
    "replica shares",
)
REAUTH_TRANSITIONS = InstrumentSpec(
    "broker.grants.reauthorization_required.transitions",
    "counter",
    "{grant}",
    (),
    "Grants that became dead (re-authorization needed)",
)
UNPERSISTED_GRANTS = InstrumentSpec(
    "broker.tokens.unpersisted_grants",
    "gauge",
    "{grant}",
    (),
    "Grants holding a refresh result the grant store failed to write (> 0: DEGRADED)",
)
OUTAGE_BUDGET = InstrumentSpec(
    "broker.grants.outage_budget",
    "gauge",
    "s",
    (),
    "Seconds until the earliest refresh-token expiry among active grants: how long the "
    "authorization server may stay down before a grant dies (negative: one is past it)",
)
LAST_RETRY_WINDOW = InstrumentSpec(
    "broker.grants.last_retry_window",
    "gauge",
    "{grant}",
    (),
    "Grants whose refresh is failing within refresh_threshold seconds of their retry deadline "
    "(refresh-token expiry minus [tokens].refresh_retry_margin)",
)
CREDENTIAL_EXPIRY = InstrumentSpec(
    "broker.credential.expiry",
    "gauge",
    "s",
    (),
    "Seconds until the machine credential (LEARCredentialMachine) expires (negative: expired); "
    "not reported while none is stored",
)
AUDIT_FAILURES = InstrumentSpec(
    "broker.audit.failures",
    "counter",
    "{record}",
    ("sink", "action"),
    "Audit records that could not be written (per sink and action)",
)
RPC_SERVER_DURATION = InstrumentSpec(
    "rpc.server.duration",
    "histogram",
    "ms",
    (
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "rpc.grpc.status_code",
        "server.address",
        "server.port",
    ),
    "Duration of inbound gRPC calls (OpenTelemetry RPC semantic conventions)",
    _RPC_BUCKETS,
)
HTTP_CLIENT_DURATION = InstrumentSpec(
    "http.client.request.duration",
    "histogram",
    "s",
    (
        "http.request.method",
        "server.address",
        "server.port",
        "http.response.status_code",
        "error.type",
    ),
    "Duration of outbound HTTP requests to the authorization server "
    "(OpenTelemetry HTTP semantic conventions)",
    _HTTP_BUCKETS,
)

ALL: tuple[InstrumentSpec, ...] = (
    TOKEN_REQUESTS,
    CACHE_HITS,
    CACHE_MISSES,
    REFRESH_DURATION,
    SERVED_TTL,
    SIGN_DURATION,
    SIGN_ERRORS,
    HSM_UP,
    AS_ERRORS,
    AS_CLOCK_SKEW,
    PENDING_LOGINS,
    REAUTH_REQUIRED,
    REAUTH_TRANSITIONS,
    UNPERSISTED_GRANTS,
    OUTAGE_BUDGET,
    LAST_RETRY_WINDOW,
    CREDENTIAL_EXPIRY,
    AUDIT_FAILURES,
    RPC_SERVER_DURATION,
    HTTP_CLIENT_DURATION,
)


def create(
    meter: Meter,
    spec: InstrumentSpec,
    *,
    callbacks: Sequence[Callable[[CallbackOptions], Any]] = (),
) -> Any:
    """The instrument ``spec`` describes, on ``meter`` (``callbacks``: gauges only)."""
    if spec.kind == "counter":
        return meter.create_counter(spec.name, unit=spec.unit, description=spec.description)
    if spec.kind == "up_down_counter":
        return meter.create_up_down_counter(spec.name, unit=spec.unit, description=spec.description)
    if spec.kind == "histogram":
        return meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=spec.description,
            explicit_bucket_boundaries_advisory=spec.buckets,
        )
    return meter.create_observable_gauge(
        spec.name, callbacks=list(callbacks), unit=spec.unit, description=spec.description
    )


def single_value(source: Callable[[], float | int | None]) -> Callable[[CallbackOptions], Any]:
    """A gauge callback reporting ``source()`` (nothing while it returns ``None``)."""

    def observe(_options: CallbackOptions) -> list[Observation]:
        value = source()
        return [] if value is None else [Observation(value)]

    return observe


# --- OpenTelemetry -> Prometheus names ---------------------------------------------------------

_UNIT_WORDS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "bit": "bits",
    "%": "percent",
    "Hz": "hertz",
    "Cel": "celsius",
    "V": "volts",
    "W": "watts",
    "A": "amperes",
    "J": "joules",
    "g": "grams",
    "m": "meters",
}
_PER_UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}
_INVALID = re.compile(r"[^a-zA-Z0-9_:]+")
_ANNOTATION = re.compile(r"\{[^}]*\}")


def _clean(text: str) -> str:
    out = _INVALID.sub("_", text)
    out = re.sub(r"_+", "_", out).strip("_")
    return f"_{out}" if out[:1].isdigit() else out


def prometheus_unit(unit: str, kind: Kind) -> str:
    """The Prometheus unit word of a UCUM ``unit`` (``""`` when there is none)."""
    plain = _ANNOTATION.sub("", unit).strip()
    if plain == "1":
        return "ratio" if kind == "gauge" else ""
    if not plain:
        return ""
    main, _, per = plain.partition("/")
    word = _UNIT_WORDS.get(main, main)
    if per:
        per_word = _PER_UNIT_WORDS.get(per, per)
        word = f"{word}_per_{per_word}" if word else f"per_{per_word}"
    return _clean(word)


def prometheus_name(spec: InstrumentSpec) -> str:
    """The metric name a Prometheus scrape of the OTel Collector shows for ``spec``."""
    name = _clean(spec.name)
    unit = prometheus_unit(spec.unit, spec.kind)
    if unit and not name.endswith(f"_{unit}"):
        name = f"{name}_{unit}"
    if spec.kind == "counter" and not name.endswith("_total"):
        name = f"{name}_total"
    return name


def prometheus_label(attribute: str) -> str:
    """The Prometheus label name of an attribute key (``error.type`` -> ``error_type``)."""
    return _clean(attribute)


def prometheus_series(spec: InstrumentSpec) -> frozenset[str]:
    """Every series name ``spec`` appears under (histograms: ``_bucket``, ``_sum``, ``_count``)."""
    name = prometheus_name(spec)
    if spec.kind == "histogram":
        return frozenset({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return frozenset({name})
