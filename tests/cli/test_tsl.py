"""The DOME Trusted Services List entry (broker/ceremony/tsl.py) and operator identity."""

from __future__ import annotations

import pytest
import yaml

from broker.audit import default_operator
from broker.ceremony import tsl
from broker.errors import DidError, InvalidArgument

DID = "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY"
ED25519_DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


def _entry(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "did": DID,
        "issuer": "https://verifier.dome-marketplace.eu",
        "url": "https://broker.example.org",
        "redirect_uris": ["https://broker.example.org/callback"],
        "post_logout_uris": [],
    }
    args.update(overrides)
    return tsl.build_entry(**args)  # type: ignore[arg-type]


def test_entry_order_and_yaml_round_trip() -> None:
    entry = _entry()
    assert list(entry) == [
        "clientId",
        "url",
        "redirectUris",
        "scopes",
        "clientAuthenticationMethods",
        "authorizationGrantTypes",
        "postLogoutRedirectUris",
        "requireAuthorizationConsent",
        "requireProofKey",
        "jwkSetUrl",
        "tokenEndpointAuthenticationSigningAlgorithm",
    ]
    assert yaml.safe_load(tsl.render_yaml(entry)) == [entry]
    assert entry["postLogoutRedirectUris"] == []


@pytest.mark.parametrize(
    "issuer",
    ["https://verifier.example.org", "https://verifier.example.org/", "https://v.example.org//"],
)
def test_jwk_set_url_never_doubles_the_slash(issuer: str) -> None:
    assert _entry(issuer=issuer)["jwkSetUrl"] == f"{issuer.rstrip('/')}/oidc/did/{DID}"


def test_issuer_with_path_prefix_is_kept() -> None:
    entry = _entry(issuer="https://dome.example.org/verifier")
    assert entry["jwkSetUrl"] == f"https://dome.example.org/verifier/oidc/did/{DID}"


def test_http_is_allowed_for_loopback_only() -> None:
    assert _entry(issuer="http://127.0.0.1:3000")["jwkSetUrl"] == (
        f"http://127.0.0.1:3000/oidc/did/{DID}"
    )
    with pytest.raises(InvalidArgument, match="--url must use https"):
        _entry(url="http://broker.example.org")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("issuer", "verifier.example.org", "absolute https URL"),
        ("issuer", "ftp://verifier.example.org", "absolute https URL"),
        ("url", "https://broker.example.org/#top", "fragment"),
        ("url", "https://user:pw@broker.example.org/", "user information"),
        ("redirect_uris", ["https://b.example.org/cb x"], "whitespace"),
        ("redirect_uris", ['https://b.example.org/"'], "quotes"),
        ("redirect_uris", [], "at least one --redirect-uri"),
        ("redirect_uris", ["https://b.example.org/cb"] * 2, "distinct"),
        ("post_logout_uris", ["not a url"], "absolute https URL"),
        ("url", "https://[::1", "not a valid URL"),
    ],
)
def test_bad_values_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _entry(**{field: value})


def test_only_p256_dids_are_client_ids() -> None:
    with pytest.raises(InvalidArgument, match="P-256"):
        _entry(did=ED25519_DID)
    with pytest.raises(DidError):
        _entry(did=DID + "#" + DID[8:])


def test_operator_prefers_sudo_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    monkeypatch.setenv("USER", "root")
    assert default_operator() == "alice"
    monkeypatch.delenv("SUDO_USER")
    monkeypatch.setenv("LOGNAME", "bob")
    monkeypatch.setenv("USER", "bob")
    assert default_operator() == "bob"


def test_jwks_uri_becomes_the_jwk_set_url() -> None:
    """Registration by the broker's own key set (second DOME runbook): ``--jwks-uri``."""
    uri = "https://broker.example.org/.well-known/jwks.json"
    entry = _entry(jwks_uri=uri)
    assert entry["jwkSetUrl"] == uri
    assert entry["clientId"] == DID
    assert yaml.safe_load(tsl.render_yaml(entry)) == [entry]


@pytest.mark.parametrize(
    "uri",
    [
        "http://broker.example.org/jwks",
        "/.well-known/jwks.json",
        "https://broker.example.org/jwks#k",
        "https://broker.example.org/jwks?v=1",
        'https://broker.example.org/"',
    ],
)
def test_bad_jwks_uri_is_refused(uri: str) -> None:
    with pytest.raises(InvalidArgument, match="--jwks-uri"):
        _entry(jwks_uri=uri)
