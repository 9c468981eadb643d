"""URLs the broker trusts or publishes: absolute, ``https`` unless
``[oauth].allow_insecure_http`` is true (tests only), no fragment, no user information."""

from __future__ import annotations

from urllib.parse import urlsplit

from broker.config.section import Section
from broker.errors import ConfigError


def check_url(section: Section, key: str, value: str, *, insecure_ok: bool) -> str:
    """An absolute URL with a host, https (or http when allowed), no fragment; kept as given."""
    parts = urlsplit(value)
    allowed = ("https", "http") if insecure_ok else ("https",)
    if parts.scheme not in allowed:
        hint = "" if insecure_ok else " (http only with [oauth].allow_insecure_http = true)"
        raise ConfigError(f"{section.key(key)} must be an https URL{hint}")
    if not parts.hostname:
        raise ConfigError(f"{section.key(key)} must be an absolute URL with a host")
    if parts.fragment or value.endswith("#"):
        raise ConfigError(f"{section.key(key)} must not have a fragment")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{section.key(key)} must not carry user information")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ConfigError(f"{section.key(key)} has an invalid port") from exc
    return value
