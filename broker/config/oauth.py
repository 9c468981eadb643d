"""``[oauth]``: the client registration at the authorization server (DOME Verifier).

The issuer is kept byte-for-byte (discovery compares it exactly); ``client_id``, when given, must
be a P-256 did:key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from broker.config.ports import KeyChecks
from broker.config.section import Section, toml_type
from broker.config.urls import check_url
from broker.errors import ConfigError, DidError
from broker.oauth.origins import parse_allowed_origin
from broker.strict_json import DOCUMENT_MAX_BYTES, JWT_MAX_BYTES
from broker.tokens.schedule import LifetimeKind, RefreshTokenLifetime

MAX_CLOCK_SKEW = 60.0  # TEST-CATALOGUE B05: a configured skew of at most 60 s

KidFormatName = Literal["did", "did_url", "jwk_thumbprint"]
KID_FORMATS: tuple[KidFormatName, ...] = ("did", "did_url", "jwk_thumbprint")
"""The values of ``[oauth].kid_format``: those of :class:`broker.keys.kid.KidFormat`, in its order
(tests/config/test_config_kid_jwks.py holds them equal); the wiring converts the name."""


@dataclass(frozen=True)
class OAuthSettings:
    """``[oauth]``: the client registration at the authorization server (DOME Verifier)."""

    issuer: str
    redirect_uri: str
    client_id: str | None = None  # the did:key; derived from the key when None
    scope: str = "openid learcredential"
    use_pkce: bool = True
    use_par: bool = False
    dome_compat: bool = True
    clock_skew: float = 60.0
    http_timeout: float = 10.0
    max_response_bytes: int = DOCUMENT_MAX_BYTES
    """Cap of one AS response body (metadata, JWKS, token, PAR), as read and as JSON text."""
    max_jwt_bytes: int = JWT_MAX_BYTES
    """Cap of one compact JWT from the AS (the id_token), checked before it is decoded."""
    ca_file: Path | None = None
    login_ttl: float = 600.0
    refresh_token_lifetime: RefreshTokenLifetime = field(default_factory=RefreshTokenLifetime)
    """How long a refresh token lives when the token response has no ``refresh_expires_in``:
    ``"access"`` (as the access token issued with it: DOME v2), seconds, or ``"unknown"``."""
    allow_insecure_http: bool = False
    compensate_skew: bool = False
    """C09: sign client assertions on the AS's clock as measured from its ``Date`` headers."""
    allowed_endpoint_origins: tuple[str, ...] = ()
    """https origins besides the issuer's that the AS metadata may name for the token, PAR,
    JWKS and revocation endpoints (normalized, e.g. ``https://token.example.org``)."""
    kid_format: KidFormatName = "did"
    """The ``kid`` of our JWS headers and published keys: a :class:`broker.keys.kid.KidFormat`
    value."""


def parse_oauth(section: Section, checks: KeyChecks) -> OAuthSettings:
    insecure = section.boolean("allow_insecure_http", False)
    issuer = check_url(section, "issuer", section.req_string("issuer"), insecure_ok=insecure)
    if urlsplit(issuer).query:
        raise ConfigError(f"{section.key('issuer')} must not have a query (OIDC Discovery 4.3)")
    redirect = check_url(
        section, "redirect_uri", section.req_string("redirect_uri"), insecure_ok=insecure
    )
    client_id = section.string("client_id")
    if client_id is not None:
        try:
            key_type = checks.did_key_type(client_id)
        except DidError as exc:
            raise ConfigError(
                f"{section.key('client_id')} must be a did:key ({exc.message})"
            ) from exc
        if key_type != "P-256":
            raise ConfigError(
                f"{section.key('client_id')} must be a P-256 did:key (did:key:zDn...)"
            )
    scope = section.string("scope", default="openid learcredential")
    assert scope is not None
    if "openid" not in scope.split(" ") or "" in scope.split(" "):
        raise ConfigError(
            f"{section.key('scope')} must be space-separated scope tokens including 'openid'"
        )
    if section.has("assertion_audience"):
        raise ConfigError(
            f"{section.key('assertion_audience')} was removed: the client assertion's aud is "
            "always the issuer (RFC 7523bis, FAPI 2.0); the token endpoint URL named by the AS "
            "metadata let the metadata choose the audience. Delete the key."
        )
    max_response = section.integer(
        "max_response_bytes", DOCUMENT_MAX_BYTES, low=4096, high=16 * 1024 * 1024
    )
    max_jwt = section.integer("max_jwt_bytes", JWT_MAX_BYTES, low=1024, high=1024 * 1024)
    if max_jwt > max_response:
        raise ConfigError(
            f"{section.key('max_jwt_bytes')} must not exceed {section.key('max_response_bytes')}"
        )
    return OAuthSettings(
        issuer=issuer,
        redirect_uri=redirect,
        client_id=client_id,
        scope=scope,
        use_pkce=section.boolean("use_pkce", True),
        use_par=section.boolean("use_par", False),
        dome_compat=section.boolean("dome_compat", True),
        clock_skew=section.number("clock_skew", 60.0, low=0.0, high=MAX_CLOCK_SKEW),
        http_timeout=section.number("http_timeout", 10.0, low=0.1, high=300.0),
        max_response_bytes=max_response,
        max_jwt_bytes=max_jwt,
        ca_file=section.path("ca_file"),
        login_ttl=section.number("login_ttl", 600.0, low=30.0, high=3600.0),
        allow_insecure_http=insecure,
        compensate_skew=section.boolean("compensate_skew", False),
        allowed_endpoint_origins=_origins(section, "allowed_endpoint_origins"),
        kid_format=section.choice("kid_format", KID_FORMATS, "did"),
        refresh_token_lifetime=_refresh_token_lifetime(section),
    )


def _refresh_token_lifetime(section: Section) -> RefreshTokenLifetime:
    """``"access"`` (default), ``"unknown"``, or a positive integer of seconds (<= 1 year)."""
    key = "refresh_token_lifetime"
    value = section.raw(key, False)
    if value is None:
        return RefreshTokenLifetime()
    if isinstance(value, str) and value in (LifetimeKind.ACCESS, LifetimeKind.UNKNOWN):
        return RefreshTokenLifetime(LifetimeKind(value))
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 31_536_000:
        return RefreshTokenLifetime.of(value)
    raise ConfigError(
        f'{section.key(key)} must be "access", "unknown" or a whole number of seconds '
        "in [1, 31536000]"
    )


def _origins(section: Section, key: str) -> tuple[str, ...]:
    """An array of https origins (scheme, host, optional port; no path), normalized."""
    if not section.has(key):
        return ()
    value = section.raw(key, False)
    if not isinstance(value, list):
        raise ConfigError(f"{section.key(key)} must be an array of strings, not {toml_type(value)}")
    origins: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ConfigError(f"{section.key(key)} entries must be strings")
        try:
            origins.append(parse_allowed_origin(item))
        except ValueError as exc:
            raise ConfigError(f"{section.key(key)} entry {item!r} {exc}") from None
    return tuple(dict.fromkeys(origins))
