"""``[key]`` HSM resilience settings (D02, D07, D08): validation, and how ``broker.app.hsm``
hands them to :class:`broker.keys.health.HsmHealth`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.app.hsm import hsm_health
from broker.app.settings import load_settings
from broker.config import key as key_config
from broker.errors import ConfigError
from broker.keys.health import DEFAULT_BUSY_RETRIES, DEFAULT_OP_TIMEOUT, PROBE_BACKOFF
from tests.clock import FakeClock
from tests.config.test_config import Loader, base, changed, load

__all__ = ["base", "load"]  # fixtures shared with test_config

Doc = dict[str, dict[str, Any]]


def test_key_hsm_defaults_match_the_health_defaults(base: Doc, load: Loader) -> None:
    """config keeps the file's defaults itself (it imports nothing of keys): they must stay the
    HSM health's own."""
    k = load(base).key
    assert k.busy_retries == key_config.DEFAULT_BUSY_RETRIES == DEFAULT_BUSY_RETRIES == 3
    assert k.sign_timeout == key_config.DEFAULT_SIGN_TIMEOUT == DEFAULT_OP_TIMEOUT == 10.0
    assert (k.probe_initial, k.probe_max) == (PROBE_BACKOFF.initial, PROBE_BACKOFF.maximum)
    assert (key_config.DEFAULT_PROBE_INITIAL, key_config.DEFAULT_PROBE_MAX) == (2.0, 30.0)


def test_key_hsm_values_are_read(base: Doc, load: Loader) -> None:
    doc = changed(base, "key", "busy_retries", 0)
    doc = changed(doc, "key", "sign_timeout", 2.5)
    doc = changed(doc, "key", "probe_initial", 0.5)
    doc = changed(doc, "key", "probe_max", 0.5)
    k = load(doc).key
    assert (k.busy_retries, k.sign_timeout, k.probe_initial, k.probe_max) == (0, 2.5, 0.5, 0.5)


def test_key_sign_timeout_zero_means_no_bound(base: Doc, load: Loader) -> None:
    assert load(changed(base, "key", "sign_timeout", 0)).key.sign_timeout is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("busy_retries", -1, "[key].busy_retries must be within [0, 10], got -1"),
        ("busy_retries", 11, "[key].busy_retries must be within [0, 10], got 11"),
        ("busy_retries", 1.5, "[key].busy_retries must be an integer, not a float"),
        ("busy_retries", True, "[key].busy_retries must be an integer, not a boolean"),
        ("busy_retries", "3", "[key].busy_retries must be an integer, not a string"),
        ("sign_timeout", -1, "[key].sign_timeout must be within [0, 300], got -1"),
        ("sign_timeout", 301, "[key].sign_timeout must be within [0, 300], got 301"),
        ("sign_timeout", 0.01, "[key].sign_timeout must be 0 (no bound) or at least 0.05"),
        ("sign_timeout", "10", "[key].sign_timeout must be a number, not a string"),
        ("sign_timeout", float("nan"), "[key].sign_timeout must be within [0, 300], got nan"),
        ("probe_initial", 0, "[key].probe_initial must be within [0.1, 300], got 0"),
        ("probe_initial", 400, "[key].probe_initial must be within [0.1, 300], got 400"),
        ("probe_max", 3601, "[key].probe_max must be within [0.1, 3600], got 3601"),
        ("probe_max", 1, "[key].probe_max must be at least [key].probe_initial"),
        ("probe_max", False, "[key].probe_max must be a number, not a boolean"),
    ],
)
def test_key_hsm_bad_values_name_the_key(
    base: Doc, load: Loader, key: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(changed(base, "key", key, value))
    assert message in str(info.value)


def test_key_unknown_hsm_key_is_rejected(base: Doc, load: Loader) -> None:
    with pytest.raises(ConfigError, match=r"unknown key \[key\]\.sign_timeout_s"):
        load(changed(base, "key", "sign_timeout_s", 5))


def test_service_hands_key_settings_to_hsm_health(base: Doc, load: Loader) -> None:
    doc = changed(base, "key", "busy_retries", 5)
    doc = changed(doc, "key", "sign_timeout", 1.5)
    doc = changed(doc, "key", "probe_initial", 0.5)
    doc = changed(doc, "key", "probe_max", 4)
    health = hsm_health(load(doc), FakeClock())
    try:
        assert health.busy_retries == 5
        assert health.op_timeout == 1.5
        assert len(list(health.busy_delays())) == 5
        delays = health._probe_backoff.delays()
        assert [next(delays) for _ in range(7)] == [
            0.5,
            0.75,
            1.125,
            1.6875,
            2.53125,
            3.796875,
            4.0,
        ]
    finally:
        health.stop()


def test_service_sign_timeout_zero_gives_an_unbounded_health(base: Doc, load: Loader) -> None:
    health = hsm_health(load(changed(base, "key", "sign_timeout", 0)), FakeClock())
    try:
        assert health.op_timeout is None
    finally:
        health.stop()


def test_example_file_sets_the_hsm_keys(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "broker.example.toml"
    k = load_settings(example, check_files=False).key
    assert (k.busy_retries, k.sign_timeout, k.probe_initial, k.probe_max) == (3, 10.0, 2.0, 30.0)
    # and a copy with other values loads them: the example's keys are the real ones
    text = example.read_text().replace("sign_timeout = 10", "sign_timeout = 0")
    (tmp_path / "b.toml").write_text(text)
    assert load_settings(tmp_path / "b.toml", check_files=False).key.sign_timeout is None
