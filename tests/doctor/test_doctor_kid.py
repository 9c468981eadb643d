"""``broker doctor`` check ``config.kid``: reports the kid form and the key set URL; warns when a
non-did kid meets the DOME Verifier (which refuses it at the token endpoint) or when a thumbprint
kid has no key set published."""

from __future__ import annotations

from typing import Any

import pytest

from broker.doctor import config_checks
from broker.doctor.result import Status
from broker.doctor.runner import ALL_NAMES
from tests.config.test_config import Loader, base, changed, load

__all__ = ["base", "load"]  # fixtures re-used from the config tests

Doc = dict[str, dict[str, Any]]


def test_config_kid_is_a_doctor_check() -> None:
    assert "config.kid" in ALL_NAMES
    assert ALL_NAMES.index("config.kid") == ALL_NAMES.index("config.policy") + 1


def test_default_bare_did_is_ok_and_names_the_key_set_url(base: Doc, load: Loader) -> None:
    result = config_checks.kid(load(base))
    assert result.status is Status.OK
    assert '"did"' in result.detail
    assert "https://broker.example.org/.well-known/jwks.json" in result.detail


@pytest.mark.parametrize("kid_format", ["did_url", "jwk_thumbprint"])
def test_non_did_kid_with_dome_compat_warns(base: Doc, load: Loader, kid_format: str) -> None:
    result = config_checks.kid(load(changed(base, "oauth", "kid_format", kid_format)))
    assert result.status is Status.WARN
    assert "DOME" in result.detail and "invalid_client" in result.detail


def test_non_did_kid_with_a_dome_issuer_warns_even_without_dome_compat(
    base: Doc, load: Loader
) -> None:
    doc = changed(
        changed(base, "oauth", "kid_format", "jwk_thumbprint"), "oauth", "dome_compat", False
    )
    assert config_checks.kid(load(doc)).status is Status.WARN


def test_thumbprint_kid_for_a_standards_server_is_ok(base: Doc, load: Loader) -> None:
    doc = changed(
        changed(base, "oauth", "kid_format", "jwk_thumbprint"), "oauth", "dome_compat", False
    )
    doc = changed(doc, "oauth", "issuer", "https://as.example.org")
    result = config_checks.kid(load(doc))
    assert result.status is Status.OK and '"jwk_thumbprint"' in result.detail


def test_thumbprint_kid_without_a_key_set_warns(base: Doc, load: Loader) -> None:
    doc = changed(
        changed(base, "oauth", "kid_format", "jwk_thumbprint"), "oauth", "dome_compat", False
    )
    doc = changed(changed(doc, "oauth", "issuer", "https://as.example.org"), "web", "jwks_path", "")
    result = config_checks.kid(load(doc))
    assert result.status is Status.WARN and "jwks_path" in result.detail
