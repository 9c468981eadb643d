"""Which origins (RFC 6454: scheme, host, port) the AS metadata may name for the endpoints the
broker sends credentials to or takes keys from.

The token, PAR and revocation endpoints receive HSM-signed client assertions; the JWKS decides
which id_tokens the broker believes. When the metadata names one of them on another origin than
the issuer's, the metadata would choose where our credentials go and whose keys we trust, so it
is refused unless the operator listed that origin in ``[oauth].allowed_endpoint_origins``.

The authorization endpoint is not checked: the broker never sends it anything itself (the
user agent goes there with a ``request_uri`` or a request object whose ``aud`` is the issuer),
and the authorization response's ``iss`` is checked against the issuer (RFC 9207).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

CHECKED_ENDPOINTS = (
    "token_endpoint",
    "pushed_authorization_request_endpoint",
    "jwks_uri",
    "revocation_endpoint",
)
_DEFAULT_PORTS = {"https": 443, "http": 80}


class OriginVerdict(enum.StrEnum):
    ISSUER = "issuer's origin"
    ALLOWED = "allowed by [oauth].allowed_endpoint_origins"
    REFUSED = "refused: not the issuer's origin, not allowed"


@dataclass(frozen=True)
class EndpointOrigin:
    """One metadata endpoint (by its metadata name), its origin and the verdict on it."""

    name: str
    origin: str
    verdict: OriginVerdict


def origin_of(url: str) -> str | None:
    """The serialized origin of ``url`` (``https://host`` or ``https://host:port`` for a
    non-default port; scheme and host lower-cased), None when it has no scheme or host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if not scheme or not host:
        return None
    shown_host = f"[{host}]" if ":" in host else host
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{shown_host}"
    return f"{scheme}://{shown_host}:{port}"


def parse_allowed_origin(value: str) -> str:
    """An entry of ``allowed_endpoint_origins``: an https origin, nothing else (no path, query,
    fragment or user information); returned normalized. Raises ValueError naming the problem."""
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    if parts.scheme.lower() != "https":
        raise ValueError("must be an https origin")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry user information")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError("must be an origin only (scheme, host, port): no path, query or fragment")
    origin = origin_of(value)
    assert origin is not None
    return origin


def endpoint_origins(
    doc: Mapping[str, Any], *, issuer: str, allowed: Iterable[str]
) -> list[EndpointOrigin]:
    """The verdict on every checked endpoint present (as a string) in the metadata ``doc``."""
    issuer_origin = origin_of(issuer)
    allowed_set = frozenset(allowed)
    found: list[EndpointOrigin] = []
    for name in CHECKED_ENDPOINTS:
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            continue
        origin = origin_of(value)
        if origin is not None and origin == issuer_origin:
            verdict = OriginVerdict.ISSUER
        elif origin is not None and origin in allowed_set:
            verdict = OriginVerdict.ALLOWED
        else:
            verdict = OriginVerdict.REFUSED
        found.append(EndpointOrigin(name, origin or "(no origin)", verdict))
    return found
