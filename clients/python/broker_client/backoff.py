"""Reconnect delays for the watch stream: exponential with jitter, capped."""

from __future__ import annotations

import random
from dataclasses import dataclass

_RANDOM = random.SystemRandom()


@dataclass(frozen=True)
class Backoff:
    """``initial`` seconds after the first failure, doubling up to ``maximum``. Errors that a
    retry cannot fix (permission denied, unknown grant ...) wait ``maximum`` at once."""

    initial: float = 1.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")

    def next(self, previous: float | None, *, retryable: bool) -> float:
        """The next base delay after ``previous`` (``None`` after a success)."""
        if not retryable:
            return self.maximum
        if previous is None:
            return self.initial
        return min(previous * 2, self.maximum)

    @staticmethod
    def jittered(delay: float) -> float:
        """Between half and all of ``delay``, so many callers do not reconnect in step."""
        return _RANDOM.uniform(delay / 2, delay)


DEFAULT_BACKOFF = Backoff()
