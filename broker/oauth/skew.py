"""Clock skew against the authorization server, measured from the HTTP ``Date`` header
(RFC 9110 section 6.6.1) of every AS response (discovery, JWKS, token, PAR).

Why: an AS enforcing FAPI 2.0 (Security Profile, client requirements note 1) accepts a client
assertion whose ``iat`` is at most ~10 s in its future and rejects one more than 60 s off; a
broker clock outside that window gets ``invalid_client`` on every token request (TEST-CATALOGUE
C09). :class:`SkewMonitor` keeps a smoothed offset (``AS time - our time``, seconds; positive:
the AS is ahead), reports each update to a :class:`SkewObserver` (the service turns it into the
``broker.as.clock_skew`` gauge, unit s), logs a warning once when ``|offset|`` exceeds
``warn_threshold`` (5 s) and an error once when it exceeds ``alarm_threshold`` (the configured
``clock_skew``), and, only when ``compensate`` is on, shifts the client-assertion ``iat``/``exp``
onto the AS's clock (:meth:`assertion_clock`).

``Date`` has one-second resolution and is stamped before the response travels back, so one
sample reads up to ``1 s + latency`` low; the exponentially weighted mean (first sample taken
as is) smooths that and isolated outliers out. Unparsable or missing ``Date`` headers are
ignored.
"""

from __future__ import annotations

import logging
import math
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx
from opentelemetry import trace

from broker.clock import Clock
from broker.errors import ConfigError

_log = logging.getLogger(__name__)

WARN_THRESHOLD = 5.0
"""Seconds of skew that get a warning: FAPI 2.0 ASs accept only ~10 s of future ``iat``."""
DEFAULT_SMOOTHING = 0.3


class SkewObserver(Protocol):
    """Told every smoothed offset (seconds, AS minus us). Must not block or raise."""

    def skew_measured(self, offset: float) -> None: ...


def parse_http_date(value: str | None) -> float | None:
    """An IMF-fixdate / RFC 850 / asctime ``Date`` as epoch seconds, None when absent or bad."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    try:
        stamp = when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return stamp if math.isfinite(stamp) else None


class _Level:
    OK = 0
    WARN = 1
    ALARM = 2


class CompensatedClock:
    """A :class:`Clock` whose ``now()`` is on the AS's clock (for client assertions only)."""

    def __init__(self, clock: Clock, monitor: SkewMonitor) -> None:
        self._clock = clock
        self._monitor = monitor

    def now(self) -> float:
        return self._clock.now() + self._monitor.compensation

    def monotonic(self) -> float:
        return self._clock.monotonic()


class SkewMonitor:
    """The smoothed AS clock offset of one AS, fed by an httpx response event hook."""

    def __init__(
        self,
        clock: Clock,
        *,
        alarm_threshold: float,
        warn_threshold: float = WARN_THRESHOLD,
        compensate: bool = False,
        smoothing: float = DEFAULT_SMOOTHING,
        observer: SkewObserver | None = None,
    ) -> None:
        if not warn_threshold > 0:
            raise ConfigError("the skew warning threshold must be positive")
        if not alarm_threshold >= 0:
            raise ConfigError("the skew alarm threshold must not be negative")
        if not 0 < smoothing <= 1:
            raise ConfigError("skew smoothing must be within (0, 1]")
        self._clock = clock
        self._warn = warn_threshold
        self._alarm = max(alarm_threshold, warn_threshold)
        self._compensate = compensate
        self._alpha = smoothing
        self._observer = observer
        self._offset: float | None = None
        self._samples = 0
        self._level = _Level.OK

    def __repr__(self) -> str:
        return f"SkewMonitor(offset={self._offset!r}, compensate={self._compensate})"

    @property
    def offset(self) -> float | None:
        """Smoothed ``AS time - our time`` in seconds; None before the first ``Date``."""
        return self._offset

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def compensate(self) -> bool:
        return self._compensate

    @property
    def compensation(self) -> float:
        """What to add to our clock for a client assertion: the offset when compensating."""
        if not self._compensate or self._offset is None:
            return 0.0
        return self._offset

    def suspected(self) -> bool:
        """True while ``|offset|`` exceeds the warning threshold: an ``invalid_client`` then
        most likely means our assertion's ``iat`` is out of the AS's window."""
        return self._offset is not None and abs(self._offset) > self._warn

    def assertion_clock(self, clock: Clock) -> Clock:
        """``clock`` itself, or a clock shifted onto the AS's when compensating."""
        return CompensatedClock(clock, self) if self._compensate else clock

    def observe(self, date: str | None, *, host: str = "") -> float | None:
        """Feed one response's ``Date`` header; returns the new smoothed offset (None if the
        header is missing or invalid)."""
        server_time = parse_http_date(date)
        if server_time is None:
            return None
        sample = server_time - self._clock.now()
        if self._offset is None:
            offset = sample
        else:
            offset = self._offset + self._alpha * (sample - self._offset)
        self._offset = offset
        self._samples += 1
        trace.get_current_span().set_attribute("as.clock_skew_seconds", round(offset, 3))
        self._report(offset, host)
        if self._observer is not None:
            try:
                self._observer.skew_measured(offset)
            except Exception:
                _log.exception("clock skew observer failed")
        return offset

    async def on_response(self, response: httpx.Response) -> None:
        """httpx ``response`` event hook (runs once the headers arrived)."""
        self.observe(response.headers.get("date"), host=response.request.url.host)

    def attach(self, http: httpx.AsyncClient) -> None:
        """Register :meth:`on_response` on ``http`` (once)."""
        hooks = http.event_hooks
        responses = list(hooks.get("response", []))
        if self.on_response not in responses:
            responses.append(self.on_response)
            http.event_hooks = {**hooks, "response": responses}

    def _report(self, offset: float, host: str) -> None:
        size = abs(offset)
        if size > self._alarm:
            level = _Level.ALARM
        elif size > self._warn:
            level = _Level.WARN
        else:
            level = _Level.OK
        if level == self._level:
            return
        previous, self._level = self._level, level
        action = "compensating" if self._compensate else "not compensating"
        if level == _Level.ALARM:
            _log.error(
                "clock skew against the authorization server %s is %+.1f s, beyond the allowed "
                "%.0f s: client assertions and id_tokens will be rejected (%s); fix NTP",
                host,
                offset,
                self._alarm,
                action,
            )
        elif level == _Level.WARN and previous == _Level.OK:
            _log.warning(
                "clock skew against the authorization server %s is %+.1f s (over %.0f s; FAPI "
                "2.0 servers reject assertions ~10 s in their future; %s)",
                host,
                offset,
                self._warn,
                action,
            )
        elif level == _Level.OK:
            _log.info(
                "clock skew against the authorization server %s is back to %+.1f s", host, offset
            )
