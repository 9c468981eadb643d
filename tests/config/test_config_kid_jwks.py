"""``[oauth].kid_format`` and ``[web].jwks_path`` / ``jwks_max_age`` (issue 10 section 3)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.app.settings import kid_format
from broker.app.web import jwks_endpoint
from broker.config import KID_FORMATS
from broker.errors import ConfigError
from broker.keys.kid import KidFormat
from tests.config.test_config import DID, Loader, base, changed, load

__all__ = ["base", "load"]  # fixtures re-used from the main config tests


def test_defaults_bare_did_and_the_well_known_path(
    base: dict[str, dict[str, Any]], load: Loader
) -> None:
    settings = load(base)
    assert settings.oauth.kid_format == "did"
    assert kid_format(settings) is KidFormat.DID
    assert settings.web.jwks_path == "/.well-known/jwks.json"
    assert settings.web.jwks_max_age == 300
    endpoint = jwks_endpoint(settings, DID)
    assert endpoint is not None
    assert (endpoint.path, endpoint.max_age, endpoint.kid_format) == (
        "/.well-known/jwks.json",
        300,
        KidFormat.DID,
    )


@pytest.mark.parametrize("value", ["did", "did_url", "jwk_thumbprint"])
def test_kid_format_values(base: dict[str, dict[str, Any]], load: Loader, value: str) -> None:
    settings = load(changed(base, "oauth", "kid_format", value))
    assert kid_format(settings) is KidFormat(value)
    endpoint = jwks_endpoint(settings, DID)
    assert endpoint is not None and endpoint.kid_format == KidFormat(value)


def test_the_file_offers_exactly_the_kid_formats_of_the_keys_package() -> None:
    """config names the values itself (it imports nothing of keys), in KidFormat's order: the
    refusal below lists them."""
    assert tuple(f.value for f in KidFormat) == KID_FORMATS


@pytest.mark.parametrize("value", ["DID", "thumbprint", "", 1])
def test_bad_kid_format_is_refused(
    base: dict[str, dict[str, Any]], load: Loader, value: Any
) -> None:
    with pytest.raises(ConfigError, match=r"\[oauth\].kid_format must be one of"):
        load(changed(base, "oauth", "kid_format", value))


def test_empty_jwks_path_turns_the_route_off(base: dict[str, dict[str, Any]], load: Loader) -> None:
    settings = load(changed(base, "web", "jwks_path", ""))
    assert settings.web.jwks_path is None
    assert jwks_endpoint(settings, DID) is None


def test_custom_jwks_path_and_max_age(base: dict[str, dict[str, Any]], load: Loader) -> None:
    doc = changed(changed(base, "web", "jwks_path", "/keys/broker.jwks"), "web", "jwks_max_age", 0)
    settings = load(doc)
    assert (settings.web.jwks_path, settings.web.jwks_max_age) == ("/keys/broker.jwks", 0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("jwks.json", "absolute path"),
        ("https://broker.example.org/jwks", "absolute path"),
        ("//host/jwks", "absolute path"),
        ("/jwks?v=1", "query"),
        ("/jwks#k", "query or a fragment"),
        ("/a/../jwks", "'..' segments"),
        ("/healthz", "collides"),
        ("/callback", "collides"),
        ("/request-objects/jwks", "collides"),
        (7, "must be a string"),
    ],
)
def test_bad_jwks_path_is_refused_with_the_key(
    base: dict[str, dict[str, Any]], load: Loader, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(changed(base, "web", "jwks_path", value))
    assert "[web].jwks_path" in str(info.value) and message in str(info.value)


@pytest.mark.parametrize("value", [-1, 86_401, "300"])
def test_bad_jwks_max_age_is_refused(
    base: dict[str, dict[str, Any]], load: Loader, value: Any
) -> None:
    with pytest.raises(ConfigError, match=r"\[web\].jwks_max_age must be"):
        load(changed(base, "web", "jwks_max_age", value))
