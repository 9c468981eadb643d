"""``[oauth] max_response_bytes`` / ``max_jwt_bytes``: the size caps of AS input (issue 8 s.4)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.app.oauth import client_config
from broker.errors import ConfigError
from broker.strict_json import DOCUMENT_MAX_BYTES, JWT_MAX_BYTES
from tests.config.test_config import DID, Loader, base, changed, load

__all__ = ["base", "load"]  # fixtures re-used from the main config tests


def test_defaults_are_1_mib_and_64_kib(base: dict[str, dict[str, Any]], load: Loader) -> None:
    oauth = load(base).oauth
    assert oauth.max_response_bytes == DOCUMENT_MAX_BYTES == 1024 * 1024
    assert oauth.max_jwt_bytes == JWT_MAX_BYTES == 64 * 1024


def test_caps_reach_the_oauth_client_config(base: dict[str, dict[str, Any]], load: Loader) -> None:
    doc = changed(
        changed(base, "oauth", "max_response_bytes", 200_000), "oauth", "max_jwt_bytes", 8192
    )
    settings = load(doc)
    config = client_config(settings, DID)
    assert (config.max_response_bytes, config.max_jwt_bytes) == (200_000, 8192)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_response_bytes", 100, "[oauth].max_response_bytes must be within [4096, 16777216]"),
        ("max_response_bytes", "1M", "[oauth].max_response_bytes must be an integer"),
        ("max_jwt_bytes", 10, "[oauth].max_jwt_bytes must be within [1024, 1048576]"),
        ("max_jwt_bytes", 2 * 1024 * 1024, "[oauth].max_jwt_bytes must be within"),
    ],
)
def test_bad_caps_name_the_key(
    base: dict[str, dict[str, Any]], load: Loader, key: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(changed(base, "oauth", key, value))
    assert message in str(info.value)


def test_jwt_cap_must_not_exceed_the_response_cap(
    base: dict[str, dict[str, Any]], load: Loader
) -> None:
    doc = changed(
        changed(base, "oauth", "max_response_bytes", 8192), "oauth", "max_jwt_bytes", 16384
    )
    with pytest.raises(ConfigError, match=r"\[oauth\].max_jwt_bytes must not exceed"):
        load(doc)
