"""A settable :class:`broker.clock.Clock` for tests (was ``broker.clock.FakeClock``: test-only
code does not ship in the broker package)."""

from __future__ import annotations


class FakeClock:
    """Wall clock and monotonic clock advance together; :meth:`set` moves only the wall clock
    (a wall-clock step)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self._now = now
        self._mono = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    def set(self, now: float) -> None:
        self._now = now
