"""The one back-off rule (broker/backoff.py): a table of delays, the Retry-After floor, bounds."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from broker.backoff import BackoffPolicy
from broker.errors import InvalidArgument

TOKEN_ENDPOINT = BackoffPolicy(initial=5.0, maximum=60.0, jitter=0.25)
TOKEN_CORE = BackoffPolicy(initial=5.0, maximum=300.0, jitter=0.1)
HSM_PROBE = BackoffPolicy(initial=2.0, factor=1.5, maximum=30.0)


@pytest.mark.parametrize(
    ("policy", "attempt", "unit", "retry_after", "expected"),
    [
        # bare exponential (unit 0): initial * factor ** (attempt - 1), capped
        (TOKEN_ENDPOINT, 1, 0.0, None, 5.0),
        (TOKEN_ENDPOINT, 2, 0.0, None, 10.0),
        (TOKEN_ENDPOINT, 4, 0.0, None, 40.0),
        (TOKEN_ENDPOINT, 5, 0.0, None, 60.0),
        (TOKEN_ENDPOINT, 10_000, 0.0, None, 60.0),  # no overflow
        # jitter stretches by up to `jitter` of the delay, then the cap applies
        (TOKEN_ENDPOINT, 1, 0.5, None, 5.625),
        (TOKEN_ENDPOINT, 2, 0.5, None, 11.25),
        (TOKEN_ENDPOINT, 4, 0.999, None, 49.99),
        (TOKEN_ENDPOINT, 5, 0.999, None, 60.0),
        (TOKEN_CORE, 1, 0.5, None, 5.25),
        (TOKEN_CORE, 7, 0.0, None, 300.0),
        (TOKEN_CORE, 7, 0.9, None, 300.0),
        # Retry-After is a floor, itself capped at the maximum
        (TOKEN_CORE, 1, 0.0, 30.0, 30.0),
        (TOKEN_CORE, 1, 0.5, 2.0, 5.25),
        (TOKEN_CORE, 1, 0.0, 3600.0, 300.0),
        (TOKEN_CORE, 1, 0.0, -5.0, 5.0),
        # factor 1.5 (the HSM probe)
        (HSM_PROBE, 1, 0.0, None, 2.0),
        (HSM_PROBE, 4, 0.0, None, 6.75),
        (HSM_PROBE, 9, 0.0, None, 30.0),
        # zero initial: retry at once
        (BackoffPolicy(initial=0.0, maximum=0.0), 3, 0.5, None, 0.0),
    ],
)
def test_delay_table(
    policy: BackoffPolicy, attempt: int, unit: float, retry_after: float | None, expected: float
) -> None:
    assert policy.delay(attempt, unit, retry_after=retry_after) == pytest.approx(expected)


def test_delays_without_rng_are_the_bare_exponential() -> None:
    got = list(itertools.islice(HSM_PROBE.delays(), 10))
    assert got[:4] == [2.0, 3.0, 4.5, 6.75]
    assert got[-3:] == [30.0, 30.0, 30.0]


def test_delays_with_an_injected_rng_are_reproducible_and_bounded() -> None:
    first = list(itertools.islice(TOKEN_ENDPOINT.delays(random.Random(3)), 8))
    again = list(itertools.islice(TOKEN_ENDPOINT.delays(random.Random(3)), 8))
    assert first == again
    bare = list(itertools.islice(TOKEN_ENDPOINT.delays(), 8))
    for delay, floor in zip(first, bare, strict=True):
        assert floor <= delay <= min(floor * 1.25, 60.0)
    assert first != bare


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1.0, "maximum": 1.0},
        {"initial": 2.0, "maximum": 1.0},
        {"initial": 1.0, "maximum": math.inf},
        {"initial": 1.0, "maximum": 2.0, "factor": 0.5},
        {"initial": 1.0, "maximum": 2.0, "jitter": 1.0},
        {"initial": 1.0, "maximum": 2.0, "jitter": -0.1},
    ],
)
def test_bad_policies_are_invalid_argument(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        BackoffPolicy(**kwargs)


@pytest.mark.parametrize(("attempt", "unit"), [(0, 0.0), (1, 1.0), (1, -0.1)])
def test_bad_attempt_or_unit_is_invalid_argument(attempt: int, unit: float) -> None:
    with pytest.raises(InvalidArgument):
        TOKEN_CORE.delay(attempt, unit)
