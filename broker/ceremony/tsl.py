"""The DOME Trusted Services List entry for the broker's client key.

Shape: ``/work/shared/DOME-PROFILE.md`` section "Registration". ``clientId`` and the did in
``jwkSetUrl`` are the same did by construction (a mismatch passes login and then fails at the
token endpoint with 401 ``invalid_client``). ``jwkSetUrl`` = ``{issuer}/oidc/did/{did}``: the
Verifier serves a JWKS derived from the did there. With ``jwks_uri`` (``--jwks-uri``) the entry names
the broker's own key set instead (``[web].jwks_path`` on its listener; the second DOME runbook):
the kid there follows ``[oauth].kid_format``, which must then be what the Verifier expects.

The YAML is rendered by hand with JSON-quoted strings (JSON strings are YAML 1.2 double-quoted
scalars), so the printed entry is byte-for-byte the profile's layout and parses with any YAML
loader.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from broker.errors import InvalidArgument
from broker.keys.didkey import decode_did_key

SCOPES = ("openid_learcredential",)
CLIENT_AUTH_METHODS = ("client_secret_jwt",)  # DOME's name for RFC 7523 private_key_jwt
GRANT_TYPES = ("authorization_code", "refresh_token")
SIGNING_ALG = "ES256"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def check_url(name: str, value: str) -> str:
    """An absolute https URL (http only for loopback), with a host and no fragment."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError as exc:
        raise InvalidArgument(f"{name} is not a valid URL") from exc
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidArgument(f"{name} must be an absolute https URL")
    if parts.scheme == "http" and host not in _LOOPBACK:
        raise InvalidArgument(f"{name} must use https (http is allowed for loopback only)")
    if parts.fragment or value.endswith("#"):
        raise InvalidArgument(f"{name} must not have a fragment")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument(f"{name} must not carry user information")
    if any(ch.isspace() for ch in value) or '"' in value:
        raise InvalidArgument(f"{name} must not contain whitespace or quotes")
    return value


def jwk_set_url(issuer: str, did: str) -> str:
    """``{issuer}/oidc/did/{did}`` (the issuer's trailing slashes are not doubled)."""
    return f"{issuer.rstrip('/')}/oidc/did/{did}"


def build_entry(
    *,
    did: str,
    issuer: str,
    url: str,
    redirect_uris: Sequence[str],
    post_logout_uris: Sequence[str] = (),
    jwks_uri: str | None = None,
) -> dict[str, Any]:
    """The TSL entry as a mapping, in the profile's member order. ``jwkSetUrl`` is
    ``jwks_uri`` when given, else the Verifier's ``/oidc/did/{did}``."""
    decoded = decode_did_key(did)
    if decoded.key_type != "P-256":
        raise InvalidArgument("the client did must be a P-256 did:key (did:key:zDn...)")
    if not redirect_uris:
        raise InvalidArgument("at least one --redirect-uri is required")
    check_url("--issuer", issuer)
    check_url("--url", url)
    for uri in redirect_uris:
        check_url("--redirect-uri", uri)
    for uri in post_logout_uris:
        check_url("--post-logout-uri", uri)
    if jwks_uri is not None:
        check_url("--jwks-uri", jwks_uri)
        if urlsplit(jwks_uri).query:
            raise InvalidArgument("--jwks-uri must not have a query")
    if len(set(redirect_uris)) != len(redirect_uris):
        raise InvalidArgument("--redirect-uri values must be distinct")
    return {
        "clientId": did,
        "url": url,
        "redirectUris": list(redirect_uris),
        "scopes": list(SCOPES),
        "clientAuthenticationMethods": list(CLIENT_AUTH_METHODS),
        "authorizationGrantTypes": list(GRANT_TYPES),
        "postLogoutRedirectUris": list(post_logout_uris),
        "requireAuthorizationConsent": False,
        "requireProofKey": False,
        "jwkSetUrl": jwks_uri if jwks_uri is not None else jwk_set_url(issuer, did),
        "tokenEndpointAuthenticationSigningAlgorithm": SIGNING_ALG,
    }


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    raise TypeError(f"unsupported TSL value type {type(value).__name__}")


WRAPPER_KEY = "clients"  # the list's key in the Verifier's trust-framework file


def render_yaml(entry: dict[str, Any], *, wrap: bool = False) -> str:
    """The entry as one YAML list item, in the layout of the DOME profile; with ``wrap`` under
    ``clients:`` (a whole trust-framework file with this one client, or the block to merge
    into one)."""
    indent = "  " if wrap else ""
    lines = [f"{WRAPPER_KEY}:"] if wrap else []
    for index, (name, value) in enumerate(entry.items()):
        lead = "- " if index == 0 else "  "
        lines.append(f"{indent}{lead}{name}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


def wrapped(entry: dict[str, Any]) -> dict[str, Any]:
    """The ``--json --wrap`` document: ``{"clients": [entry]}``."""
    return {WRAPPER_KEY: [entry]}
