"""The one retry back-off rule of the broker: exponential, stretched by jitter, capped.

Delay before retry ``attempt + 1`` (``attempt`` >= 1 failed attempts so far)::

    min(maximum, initial * factor ** (attempt - 1) * (1 + jitter * unit))

``unit`` is a number in [0, 1) the caller draws from an injected ``random.Random`` (or fixes in
a test), so the rule itself is deterministic; ``jitter`` 0 gives the bare exponential. The
first delay is never below ``initial``, no delay is above ``maximum``. A server's
``Retry-After`` is a floor (capped at ``maximum``): :meth:`BackoffPolicy.delay`.

Used by the token endpoint's bounded retries (``oauth/token_endpoint.py``), the HSM busy retries
and recovery probe (``keys/health.py``) and the token core's per-grant back-off
(``tokens/flight.py``). Shape from AWS's "Exponential Backoff And Jitter" (its "equal" and
"full" jitter are ``unit``-scaled variants of the same stretch) and gRPC's connection back-off
(initial 1 s, multiplier 1.6, jitter 0.2, max 120 s).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from broker.errors import InvalidArgument


@dataclass(frozen=True)
class BackoffPolicy:
    initial: float
    maximum: float
    factor: float = 2.0
    jitter: float = 0.0
    """How far a delay is stretched at most, as a fraction of it (in [0, 1))."""

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.maximum and math.isfinite(self.maximum)):
            raise InvalidArgument("backoff needs 0 <= initial <= maximum (finite)")
        if not self.factor >= 1:
            raise InvalidArgument("backoff needs factor >= 1")
        if not 0 <= self.jitter < 1:
            raise InvalidArgument("backoff jitter must be in [0, 1)")

    def delay(self, attempt: int, unit: float = 0.0, *, retry_after: float | None = None) -> float:
        """The delay after ``attempt`` failed attempts; ``unit`` in [0, 1) picks the jitter;
        ``retry_after`` (the server's ``Retry-After``, seconds) is a floor, capped at
        ``maximum``."""
        if attempt < 1:
            raise InvalidArgument("attempt counts from 1")
        if not 0 <= unit < 1:
            raise InvalidArgument("the jitter unit must be in [0, 1)")
        try:
            raw = self.initial * self.factor ** (attempt - 1)
        except OverflowError:
            raw = math.inf
        delay = min(self.maximum, raw * (1 + self.jitter * unit))
        if retry_after is not None:
            delay = max(delay, min(max(retry_after, 0.0), self.maximum))
        return delay

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The endless sequence ``delay(1), delay(2), ...``; jitter units from ``rng`` (none
        without one: the bare exponential)."""
        attempt = 1
        while True:
            yield self.delay(attempt, rng.random() if rng is not None else 0.0)
            attempt += 1
