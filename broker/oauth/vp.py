"""The Verifiable Presentation a DOME machine client puts in its client assertion (W3C VC Data
Model 2.0 section 4.13 "Verifiable Presentations", in JWT form as VC-JOSE/JWT-VC use it; DOME's
client_credentials profile).

A VP JWT is signed ES256 through the :class:`broker.keys.api.Signer` seam (in the HSM) with the
did:key: header ``{"alg":"ES256","typ":"JWT","kid":<the bare did>}`` whatever ``kid`` form the
client assertions use (the Verifier names the holder by the ``kid``, a ``#fragment`` stripped);
claims ``iss`` = ``sub`` = the did, ``aud`` the issuer, ``iat``, ``nbf``, ``exp`` (short), ``jti``
and ``vp`` {``@context``, ``type``, ``holder``, ``verifiableCredential``: [the credential JWT
as a string]}.

:func:`vp_token_value` is what goes in the assertion's ``vp_token`` claim: RFC 4648 section 4
Base64 (standard alphabet) **with** ``=`` padding of the VP's ASCII bytes. The Verifier
decodes with Java's basic decoder, which takes padded and unpadded input alike; for the
characters of a compact JWS the standard and URL-safe alphabets give the same text (the
6-bit values 62 and 63 only arise from ``>``, ``?``, ``~`` and DEL), so a URL-safe decoder
reads it too.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Any

from broker.errors import ConfigError
from broker.jose import sign_compact_async
from broker.keys.api import Signer
from broker.keys.kid import kid_names_did

VC_CONTEXT_V2 = "https://www.w3.org/ns/credentials/v2"
VERIFIABLE_PRESENTATION = "VerifiablePresentation"
VP_LIFETIME = 60
"""Seconds: the presentation is made for one token request."""


@dataclass(frozen=True)
class _HolderSigner:
    """The client's signer with ``kid`` = the bare did (same key, same device)."""

    inner: Signer
    did: str

    @property
    def kid(self) -> str:
        return self.did

    @property
    def alg(self) -> str:
        return self.inner.alg

    @property
    def mechanism(self) -> str:
        return self.inner.mechanism

    def sign(self, message: bytes) -> bytes:
        return self.inner.sign(message)


def presentation_claims(
    *, holder: str, credential_jwt: str, audience: str, now: float, jti: str
) -> dict[str, Any]:
    """The VP JWT claims (see the module docstring)."""
    iat = int(now)
    return {
        "iss": holder,
        "sub": holder,
        "aud": audience,
        "iat": iat,
        "nbf": iat,
        "exp": iat + VP_LIFETIME,
        "jti": jti,
        "vp": {
            "@context": [VC_CONTEXT_V2],
            "type": [VERIFIABLE_PRESENTATION],
            "holder": holder,
            "verifiableCredential": [credential_jwt],
        },
    }


async def sign_presentation(
    signer: Signer,
    *,
    holder: str,
    credential_jwt: str,
    audience: str,
    now: float,
    jti: str | None = None,
) -> str:
    """The compact VP JWT, signed in the HSM with the key of ``holder`` (our did:key)."""
    if signer.alg != "ES256":
        raise ConfigError("presentations are signed with ES256 only")
    if not holder.startswith("did:key:") or not kid_names_did(signer.kid, holder):
        raise ConfigError("the presentation holder is not the did of the signing key")
    claims = presentation_claims(
        holder=holder,
        credential_jwt=credential_jwt,
        audience=audience,
        now=now,
        jti=jti or secrets.token_urlsafe(32),
    )
    return await sign_compact_async(_HolderSigner(signer, holder), claims, typ="JWT")


def vp_token_value(vp_jwt: str) -> str:
    """``vp_token``: padded standard Base64 of the VP JWT's ASCII text."""
    return base64.b64encode(vp_jwt.encode("ascii")).decode("ascii")
