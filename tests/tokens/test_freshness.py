"""G08: the freshness boundaries, driven by a FakeClock."""

from __future__ import annotations

import pytest

from broker.tokens.freshness import MIN_SERVE_TTL, REFRESH_THRESHOLD, Freshness, freshness
from tests.clock import FakeClock

T = REFRESH_THRESHOLD


@pytest.mark.parametrize(
    ("before_expiry", "expected"),
    [
        (T + 1, Freshness.FRESH),
        (T - 1, Freshness.STALE),
        (1, Freshness.INVALID),
        (0, Freshness.INVALID),
        (-60, Freshness.INVALID),
    ],
)
def test_g08_boundaries_with_fake_clock(before_expiry: float, expected: Freshness) -> None:
    clock = FakeClock()
    exp = clock.now() + 3600
    clock.set(exp - before_expiry)
    assert freshness(exp, clock.now()) is expected


def test_g08_exact_edges_are_inclusive_towards_refreshing() -> None:
    exp = 10_000.0
    assert freshness(exp, exp - T) is Freshness.STALE
    assert freshness(exp, exp - MIN_SERVE_TTL) is Freshness.INVALID
    assert freshness(exp, exp - MIN_SERVE_TTL - 0.001) is Freshness.STALE


def test_g08_min_ttl_zero_serves_until_the_last_second() -> None:
    exp = 10_000.0
    assert freshness(exp, exp - 1, min_ttl=0) is Freshness.STALE
    assert freshness(exp, exp, min_ttl=0) is Freshness.INVALID


def test_g08_min_ttl_above_threshold_leaves_no_stale_band() -> None:
    exp = 10_000.0
    assert freshness(exp, exp - 601, threshold=300, min_ttl=600) is Freshness.FRESH
    assert freshness(exp, exp - 599, threshold=300, min_ttl=600) is Freshness.INVALID


def test_g08_custom_threshold() -> None:
    exp = 10_000.0
    assert freshness(exp, exp - 61, threshold=60) is Freshness.FRESH
    assert freshness(exp, exp - 59, threshold=60) is Freshness.STALE
