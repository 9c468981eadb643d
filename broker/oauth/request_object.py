"""Signed authorization requests by reference (RFC 9101, JAR) and the front-channel URL.

DOME reads ``state``, ``scope``, ``nonce`` and PKCE from the query and checks that the request
object's ``client_id``, ``scope`` and ``redirect_uri`` are byte-identical (DOME-PROFILE.md), so
every value that appears in both places comes from one :class:`AuthorizationRequest`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from broker.errors import ConfigError, InvalidArgument
from broker.jose import sign_compact_async
from broker.keys.api import Signer
from broker.keys.kid import kid_names_did
from broker.oauth.config import MAX_REQUEST_OBJECT_LIFETIME, ClientConfig
from broker.oauth.metadata import ServerMetadata
from broker.oauth.pkce import S256

REQUEST_OBJECT_TYP = "oauth-authz-req+jwt"  # RFC 9101 section 10.8
MAX_REQUEST_URI_LENGTH = 512  # RFC 9101 section 5.2
_URL_SAFE = re.compile(r"^[A-Za-z0-9_\-]{16,512}$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9_\-]{43}$")


def new_state() -> str:
    """A fresh ``state``: 256 bits, base64url (DOME echoes it without percent-encoding)."""
    return secrets.token_urlsafe(32)


def new_nonce() -> str:
    """A fresh OIDC ``nonce``: 256 bits, base64url."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class AuthorizationRequest:
    """The parameters of one authorization request and the request object claims to sign."""

    claims: Mapping[str, Any] = field(repr=False)
    state: str
    nonce: str
    code_challenge: str | None
    expires_at: float


def _check_random(name: str, value: str) -> None:
    if not isinstance(value, str) or not _URL_SAFE.match(value):
        raise InvalidArgument(f"{name} must be 16-512 base64url characters")


def build_authorization_request(
    config: ClientConfig,
    metadata: ServerMetadata,
    *,
    state: str,
    nonce: str,
    code_challenge: str | None,
    now: float,
    jti: str,
) -> AuthorizationRequest:
    """The RFC 9101 section 4 claim set of a request object (no ``request``/``request_uri``,
    no ``sub``), valid for ``config.request_object_lifetime`` (<= 10 min)."""
    _check_random("state", state)
    _check_random("nonce", nonce)
    if not jti:
        raise InvalidArgument("jti must be non-empty")
    if code_challenge is not None and not _CHALLENGE.match(code_challenge):
        raise InvalidArgument("code_challenge must be an S256 challenge (43 base64url chars)")
    if config.use_pkce and code_challenge is None:
        raise InvalidArgument("this client uses PKCE: a code_challenge is required")
    lifetime = config.request_object_lifetime
    if not 0 < lifetime <= MAX_REQUEST_OBJECT_LIFETIME:
        raise ConfigError("request object lifetime must be within (0, 600] seconds")
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": config.client_id,
        "aud": metadata.issuer,
        "client_id": config.client_id,
        "response_type": "code",
        "scope": config.scope,
        "redirect_uri": config.redirect_uri,
        "state": state,
        "nonce": nonce,
    }
    if code_challenge is not None:
        claims["code_challenge"] = code_challenge
        claims["code_challenge_method"] = S256
    claims.update({"iat": iat, "nbf": iat, "exp": iat + int(lifetime), "jti": jti})
    return AuthorizationRequest(
        claims=claims,
        state=state,
        nonce=nonce,
        code_challenge=code_challenge,
        expires_at=float(iat + int(lifetime)),
    )


async def sign_request_object(signer: Signer, claims: Mapping[str, Any]) -> str:
    """Sign the claims as a compact JWS (RFC 9101 section 4): ES256, typ
    ``oauth-authz-req+jwt``, ``kid`` = the signer's kid (:mod:`broker.keys.kid`)."""
    for forbidden in ("request", "request_uri"):
        if forbidden in claims:
            raise InvalidArgument(f"a request object must not contain {forbidden!r}")
    client_id = str(claims.get("client_id", ""))
    if client_id.startswith("did:") and not kid_names_did(signer.kid, client_id):
        raise ConfigError("the request object's client_id is not the did of the signing key")
    return await sign_compact_async(signer, claims, typ=REQUEST_OBJECT_TYP)


def _join(endpoint: str, params: list[tuple[str, str]]) -> str:
    query = urlencode(params, quote_via=quote, safe="")
    return endpoint + ("&" if "?" in endpoint else "?") + query


def _check_request_uri(request_uri: str) -> None:
    if not isinstance(request_uri, str) or not request_uri:
        raise InvalidArgument("request_uri must be non-empty")
    if len(request_uri) > MAX_REQUEST_URI_LENGTH:
        raise InvalidArgument("request_uri must be at most 512 characters (RFC 9101 5.2)")


def authorization_url(
    metadata: ServerMetadata,
    config: ClientConfig,
    *,
    request_uri: str,
    state: str,
    nonce: str,
    code_challenge: str | None,
) -> str:
    """Front-channel URL for a self-hosted request object (RFC 9101 section 5.2).

    The query duplicates ``response_type``, ``client_id``, ``redirect_uri``, ``scope``,
    ``state``, ``nonce`` and PKCE byte-identically to the request object (DOME reads them from
    the query; RFC 9101 section 5 allows the duplicates)."""
    _check_request_uri(request_uri)
    params = [
        ("response_type", "code"),
        ("client_id", config.client_id),
        ("redirect_uri", config.redirect_uri),
        ("scope", config.scope),
        ("state", state),
        ("nonce", nonce),
    ]
    if code_challenge is not None:
        params += [("code_challenge", code_challenge), ("code_challenge_method", S256)]
    params.append(("request_uri", request_uri))
    return _join(metadata.authorization_endpoint, params)


def par_authorization_url(metadata: ServerMetadata, client_id: str, request_uri: str) -> str:
    """Front-channel URL after PAR (RFC 9126 section 4): only ``client_id`` and ``request_uri``."""
    _check_request_uri(request_uri)
    return _join(
        metadata.authorization_endpoint, [("client_id", client_id), ("request_uri", request_uri)]
    )
