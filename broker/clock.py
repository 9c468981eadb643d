"""Time is an input: every component takes a :class:`Clock`."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (for JWT claims and absolute expiry)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (for timeouts and durations)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
