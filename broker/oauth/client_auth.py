"""Client authentication with a signed JWT (RFC 7523 sections 2.2 and 3; OIDC Core section 9
``private_key_jwt``; DOME calls it ``client_secret_jwt``).

Every HTTP attempt gets a fresh assertion: a new ``jti`` and a new HSM signature (oidc-provider
rejects a replayed ``jti``; catalogue C08).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from broker.errors import ConfigError
from broker.jose import sign_compact_async
from broker.keys.api import Signer
from broker.keys.kid import kid_names_did
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import ServerMetadata

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60


def assertion_audience(metadata: ServerMetadata) -> str:
    """The issuer identifier as a single JSON string, always (RFC 7523bis; FAPI 2.0 Security
    Profile). Never the token endpoint URL: the metadata names that, and could name another
    host's endpoint to obtain an assertion valid there."""
    return metadata.issuer


#: Claims the assertion builder owns: ``extra_claims`` may not replace them.
REGISTERED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "exp", "jti", "nbf"})


def assertion_claims(
    config: ClientConfig,
    metadata: ServerMetadata,
    *,
    now: float,
    jti: str,
    extra_claims: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """RFC 7523 section 3: ``iss`` = ``sub`` = client_id, ``aud``, ``iat``, ``exp`` (+60 s), ``jti``;
    plus ``extra_claims`` (e.g. DOME's ``vp_token`` for client_credentials), which may not
    name any of those."""
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": config.client_id,
        "sub": config.client_id,
        "aud": assertion_audience(metadata),
        "iat": iat,
        "exp": iat + ASSERTION_LIFETIME,
        "jti": jti,
    }
    if extra_claims:
        clash = REGISTERED_CLAIMS.intersection(extra_claims)
        if clash:
            raise ConfigError(f"extra assertion claims may not replace {sorted(clash)}")
        claims.update(extra_claims)
    return claims


async def client_assertion(
    signer: Signer,
    config: ClientConfig,
    metadata: ServerMetadata,
    *,
    now: float,
    jti: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """A signed client assertion (RFC 7523 section 2.2): header ``{"alg":"ES256","typ":"JWT",
    "kid":<the signer's kid>}`` (:mod:`broker.keys.kid`); ``jti`` is fresh (256 random bits)
    unless given; ``extra_claims`` are added (see :func:`assertion_claims`)."""
    if signer.alg != "ES256":
        raise ConfigError("client assertions are signed with ES256 only")
    if config.client_id.startswith("did:") and not kid_names_did(signer.kid, config.client_id):
        raise ConfigError("client_id is not the did of the signing key (DOME verifies by did)")
    claims = assertion_claims(
        config,
        metadata,
        now=now,
        jti=jti or secrets.token_urlsafe(32),
        extra_claims=extra_claims,
    )
    return await sign_compact_async(signer, claims, typ="JWT")


def client_auth_form(client_id: str, assertion: str) -> dict[str, str]:
    """The form fields of the client authentication (RFC 7523 section 2.2), with ``client_id``
    (Spring Authorization Server, hence DOME, requires it)."""
    return {
        "client_id": client_id,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
    }
