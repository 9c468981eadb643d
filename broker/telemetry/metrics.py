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
OTHER = "other"

AS_ENDPOINTS = frozenset({"token", "par", "metadata", "jwks"})
"""The endpoints whose error answers the broker counts (broker.oauth.as_errors: the token
endpoint and PAR; broker.oauth.metadata: discovery and the JWKS)."""

OAUTH_ERROR_CODES = frozenset(
    {
        # RFC 6749 section 5.2 (token endpoint) and 4.1.2.1 (sent by some servers there too)
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
        # RFC 9101 / RFC 9126 (request objects, PAR)
        "invalid_request_object",
        "invalid_request_uri",
        "request_not_supported",
        "request_uri_not_supported",
        # RFC 8707, RFC 9449, RFC 6750
        "invalid_target",
        "invalid_dpop_proof",
        "use_dpop_nonce",
        "invalid_token",
        "insufficient_scope",
        # OIDC Core 3.1.2.6
        "interaction_required",
        "login_required",
        "consent_required",
    }
)
_HTTP_STATUSES = (400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 500, 502, 503, 504)
AS_ERROR_LABELS = OAUTH_ERROR_CODES | {f"http_{s}" for s in _HTTP_STATUSES} | {"http_other"}
"""Every value the ``error`` label of ``broker.as.errors`` takes, besides ``other``."""


def as_error_label(error: str | None, status: int) -> str:
    """The ``error`` label of an AS error answer: its OAuth code (``other`` when no OAuth
    specification defines it), else ``http_<status>`` (``http_other`` for a rare status)."""
    if error is not None:
        return error if error in OAUTH_ERROR_CODES else OTHER
    return f"http_{status}" if status in _HTTP_STATUSES else "http_other"


def _label(value: str) -> str:
    """A metric label: at most 64 characters, never a secret (a redacted value becomes a marker)."""
    text = str(value)[:_MAX_LABEL]
    return "redacted" if REDACTED in redact_text(text) else text


class BrokerMetrics:
    """The broker's instruments on one :class:`~opentelemetry.metrics.Meter` (names, units and
    attributes: :mod:`broker.telemetry.instruments`).

    :meth:`observe_reauthorization_required` and :meth:`observe_pending_logins` add the two
    gauges the grant store answers (grants that need a user to log in again, logins waiting for
    the user), once the store exists (wiring order: telemetry first). Their sources return
    ``None`` for "no observation" (a store that did not answer).
    """

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._sources: dict[str, Callable[[], int | None]] = {}
        self._token_requests = spec.create(meter, spec.TOKEN_REQUESTS)
        self._cache_hits = spec.create(meter, spec.CACHE_HITS)
        self._cache_misses = spec.create(meter, spec.CACHE_MISSES)
        self._refresh_duration = spec.create(meter, spec.REFRESH_DURATION)
        self._served_ttl = spec.create(meter, spec.SERVED_TTL)
        self._sign_duration = spec.create(meter, spec.SIGN_DURATION)
        self._sign_errors = spec.create(meter, spec.SIGN_ERRORS)
        self._as_errors = spec.create(meter, spec.AS_ERRORS)
        self._reauth_transitions = spec.create(meter, spec.REAUTH_TRANSITIONS)

    def observe_reauthorization_required(self, source: Callable[[], int | None]) -> None:
        """Register ``source`` (a store count), polled at each metric collection.

        A later call replaces the source (one gauge either way)."""
        self._observe(spec.REAUTH_REQUIRED, source)

    def observe_pending_logins(self, source: Callable[[], int | None]) -> None:
        """Register ``source`` (the login store's count of pending logins), polled at each
        metric collection: a store count, not a per-process tally, so it is right however the
        replicas share the logins. A later call replaces the source."""
        self._observe(spec.PENDING_LOGINS, source)

    def _observe(self, gauge: spec.InstrumentSpec, source: Callable[[], int | None]) -> None:
        first = gauge.name not in self._sources
        self._sources[gauge.name] = source
        if not first:
            return

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            value = self._sources[gauge.name]()
            return [] if value is None else [Observation(value)]

        spec.create(self._meter, gauge, callbacks=[observe])

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
        """One error answer of the authorization server. ``endpoint``: token, par, metadata or
        jwks (anything else is ``other``); ``error``: the OAuth code, or ``http_<status>`` for an answer
        without one (:func:`as_error_label`). The AS chooses the code, so only the codes the
        OAuth specifications define are kept: any other is ``other`` (bounded series)."""
        self._as_errors.add(
            1,
            {
                "endpoint": endpoint if endpoint in AS_ENDPOINTS else OTHER,
                "error": error if error in AS_ERROR_LABELS else OTHER,
            },
        )

    def record_reauthorization_required(self) -> None:
        self._reauth_transitions.add(1)
