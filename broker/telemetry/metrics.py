"""The token core's, key custody's and OAuth client's instruments behind typed methods.

Names, units and attributes come from the catalogue :mod:`broker.telemetry.instruments`.

Callers (token core, gRPC server, key store, OAuth client, web listener) get a
:class:`BrokerMetrics` through their constructor and call its typed ``record_*`` methods; they
never create instruments themselves. Durations are passed in, measured by the caller with its
injected clock (``Clock.monotonic``). Label values are short, low-cardinality codes: every one
goes through :func:`_label`, which bounds its length and refuses anything secret-looking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from broker.telemetry import instruments as spec
from broker.telemetry.redaction import REDACTED, redact_text

_MAX_LABEL = 64


def _label(value: str) -> str:
    """A metric label: at most 64 characters, never a secret (a redacted value becomes a marker)."""
    text = str(value)[:_MAX_LABEL]
    return "redacted" if REDACTED in redact_text(text) else text


class BrokerMetrics:
    """The broker's instruments on one :class:`~opentelemetry.metrics.Meter` (names, units and
    attributes: :mod:`broker.telemetry.instruments`).

    :meth:`observe_reauthorization_required` adds the gauge of grants that currently need a
    user to log in again, once the grant store exists (wiring order: telemetry first).
    """

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._reauth_source: Callable[[], int] | None = None
        self._token_requests = spec.create(meter, spec.TOKEN_REQUESTS)
        self._cache_hits = spec.create(meter, spec.CACHE_HITS)
        self._cache_misses = spec.create(meter, spec.CACHE_MISSES)
        self._refresh_duration = spec.create(meter, spec.REFRESH_DURATION)
        self._served_ttl = spec.create(meter, spec.SERVED_TTL)
        self._sign_duration = spec.create(meter, spec.SIGN_DURATION)
        self._sign_errors = spec.create(meter, spec.SIGN_ERRORS)
        self._as_errors = spec.create(meter, spec.AS_ERRORS)
        self._pending_logins = spec.create(meter, spec.PENDING_LOGINS)
        self._reauth_transitions = spec.create(meter, spec.REAUTH_TRANSITIONS)

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

        spec.create(self._meter, spec.REAUTH_REQUIRED, callbacks=[observe])

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
