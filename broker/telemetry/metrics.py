"""Every metric instrument of the broker, created in one place.

Callers (token core, gRPC server, key store, OAuth client, web listener) get a
:class:`BrokerMetrics` through their constructor and call its typed ``record_*`` methods; they
never create instruments themselves. Durations are passed in, measured by the caller with its
injected clock (``Clock.monotonic``). Label values are short, low-cardinality codes: every one
goes through :func:`_label`, which bounds its length and refuses anything secret-looking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from broker.telemetry.redaction import REDACTED, redact_text

_MAX_LABEL = 64

# Bucket boundaries (seconds). Sign: SoftHSM ~1 ms, network HSMs ~5-50 ms.
_SIGN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Refresh: one token-endpoint round trip plus an HSM signature.
_REFRESH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Remaining life of served access tokens: 0 s .. 1 h (DOME: 3600 s).
_TTL_BUCKETS = (0.0, 30.0, 60.0, 120.0, 225.0, 300.0, 600.0, 900.0, 1800.0, 2700.0, 3600.0)


def _label(value: str) -> str:
    """A metric label: at most 64 characters, never a secret (a redacted value becomes a marker)."""
    text = str(value)[:_MAX_LABEL]
    return "redacted" if REDACTED in redact_text(text) else text


class BrokerMetrics:
    """The broker's instruments on one :class:`~opentelemetry.metrics.Meter`.

    :meth:`observe_reauthorization_required` adds the gauge of grants that currently need a
    user to log in again, once the grant store exists (wiring order: telemetry first).
    """

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._reauth_source: Callable[[], int] | None = None
        self._token_requests = meter.create_counter(
            "broker.token.requests",
            unit="{request}",
            description="Access-token requests served, by method and outcome",
        )
        self._cache_hits = meter.create_counter(
            "broker.token.cache.hits", unit="{lookup}", description="Tokens served from cache"
        )
        self._cache_misses = meter.create_counter(
            "broker.token.cache.misses",
            unit="{lookup}",
            description="Token lookups that needed a blocking refresh",
        )
        self._refresh_duration = meter.create_histogram(
            "broker.token.refresh.duration",
            unit="s",
            description="Duration of refresh_token grants, by outcome",
            explicit_bucket_boundaries_advisory=_REFRESH_BUCKETS,
        )
        self._served_ttl = meter.create_histogram(
            "broker.token.served.time_to_expiry",
            unit="s",
            description="Remaining lifetime of access tokens handed out",
            explicit_bucket_boundaries_advisory=_TTL_BUCKETS,
        )
        self._sign_duration = meter.create_histogram(
            "broker.hsm.sign.duration",
            unit="s",
            description="Duration of one HSM signature, by mechanism",
            explicit_bucket_boundaries_advisory=_SIGN_BUCKETS,
        )
        self._sign_errors = meter.create_counter(
            "broker.hsm.sign.errors", unit="{error}", description="Failed HSM signatures, by reason"
        )
        self._as_errors = meter.create_counter(
            "broker.as.errors",
            unit="{error}",
            description="Authorization-server errors, by endpoint and OAuth error code",
        )
        self._pending_logins = meter.create_up_down_counter(
            "broker.logins.pending", unit="{login}", description="Interactive logins in progress"
        )
        self._reauth_transitions = meter.create_counter(
            "broker.grants.reauthorization_required.transitions",
            unit="{grant}",
            description="Grants that became dead (re-authorization needed)",
        )

    def observe_reauthorization_required(self, source: Callable[[], int]) -> None:
        """Register ``source`` (e.g. a store count query), polled at each metric collection.

        A later call replaces the source (one gauge either way).
        """
        first = self._reauth_source is None
        self._reauth_source = source
        if not first:
            return

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            current = self._reauth_source
            return [] if current is None else [Observation(current())]

        self._meter.create_observable_gauge(
            "broker.grants.reauthorization_required",
            callbacks=[observe],
            unit="{grant}",
            description="Grants that currently need a user to log in again",
        )

    def record_token_request(self, method: str, outcome: str) -> None:
        """One access-token request answered (``outcome``: e.g. ok, denied, not_found, error)."""
        self._token_requests.add(1, {"method": _label(method), "outcome": _label(outcome)})

    def record_cache_hit(self) -> None:
        self._cache_hits.add(1)

    def record_cache_miss(self) -> None:
        self._cache_misses.add(1)

    def record_refresh(self, duration_s: float, outcome: str) -> None:
        self._refresh_duration.record(max(0.0, duration_s), {"outcome": _label(outcome)})

    def record_served_token(self, time_to_expiry_s: float) -> None:
        self._served_ttl.record(max(0.0, time_to_expiry_s))

    def record_sign(self, duration_s: float, mechanism: str) -> None:
        self._sign_duration.record(max(0.0, duration_s), {"mechanism": _label(mechanism)})

    def record_sign_error(self, reason: str) -> None:
        self._sign_errors.add(1, {"reason": _label(reason)})

    def record_as_error(self, endpoint: str, error: str) -> None:
        """``endpoint``: token, par, discovery, jwks; ``error``: the OAuth code or a reason."""
        self._as_errors.add(1, {"endpoint": _label(endpoint), "error": _label(error)})

    def login_started(self) -> None:
        self._pending_logins.add(1)

    def login_finished(self) -> None:
        """A pending login completed, failed or expired."""
        self._pending_logins.add(-1)

    def record_reauthorization_required(self) -> None:
        self._reauth_transitions.add(1)
