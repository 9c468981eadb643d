"""``[web]``: the HTTPS listener (request objects at ``request_uri``, the callback, the key
set). ``[oauth].redirect_uri`` must be served by it: same scheme and host as its public URL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from broker.config.oauth import OAuthSettings
from broker.config.section import Section, toml_type
from broker.config.urls import check_url
from broker.errors import BrokerError, ConfigError
from broker.web.jwks import DEFAULT_JWKS_PATH, DEFAULT_MAX_AGE, MAX_MAX_AGE, check_jwks_path


@dataclass(frozen=True)
class WebSettings:
    """``[web]``: the HTTPS listener (request objects at ``request_uri``, the callback)."""

    public_base_url: str
    host: str = "0.0.0.0"  # noqa: S104 - a server listener; operators narrow it
    port: int = 8443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    post_login_url: str | None = None
    jwks_path: str | None = DEFAULT_JWKS_PATH
    """Where the listener serves our public key set; None (``""`` in the file): not served."""
    jwks_max_age: int = DEFAULT_MAX_AGE


def parse_web(section: Section, oauth: OAuthSettings) -> WebSettings:
    insecure = oauth.allow_insecure_http
    base = check_url(
        section, "public_base_url", section.req_string("public_base_url"), insecure_ok=insecure
    )
    if urlsplit(base).query:
        raise ConfigError(f"{section.key('public_base_url')} must not have a query")
    base_origin = urlsplit(base)[:2]
    if urlsplit(oauth.redirect_uri)[:2] != base_origin:
        raise ConfigError(
            "[oauth].redirect_uri must be served by this broker: same scheme and host as "
            f"{section.key('public_base_url')}"
        )
    post_login = section.string("post_login_url")
    if post_login is not None:
        check_url(section, "post_login_url", post_login, insecure_ok=insecure)
    host = section.string("host", default="0.0.0.0")  # noqa: S104
    assert host is not None
    cert = section.path("tls_cert")
    key = section.path("tls_key")
    if (cert is None) != (key is None):
        raise ConfigError(f"{section.key('tls_cert')} and {section.key('tls_key')} go together")
    return WebSettings(
        public_base_url=base,
        host=host,
        port=section.integer("port", 8443, low=0, high=65535),
        tls_cert=cert,
        tls_key=key,
        post_login_url=post_login,
        jwks_path=_jwks_path(section, oauth.redirect_uri),
        jwks_max_age=section.integer("jwks_max_age", DEFAULT_MAX_AGE, low=0, high=MAX_MAX_AGE),
    )


def _jwks_path(section: Section, redirect_uri: str) -> str | None:
    """``[web].jwks_path``: an absolute path without query; ``""`` turns the route off."""
    value = section.raw("jwks_path", False)
    if value is None:
        return DEFAULT_JWKS_PATH
    if value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{section.key('jwks_path')} must be a string, not {toml_type(value)}")
    try:
        path = check_jwks_path(value)
    except BrokerError as exc:
        raise ConfigError(f"{section.key('jwks_path')}: {exc.message}") from None
    if (
        path == "/healthz"
        or path.startswith("/request-objects/")
        or path == urlsplit(redirect_uri).path
    ):
        raise ConfigError(f"{section.key('jwks_path')} collides with another route of the listener")
    return path
