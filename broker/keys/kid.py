"""The JOSE ``kid`` of the client key, in one place: JWS headers and the published JWKS use it.

Three forms (``[oauth].kid_format``):

- ``did``: the bare did:key, ``did:key:zDn...``. The DOME Verifier's form (a DID URL as ``kid``
  fails at its token endpoint); the default.
- ``did_url``: the did:key DID URL ``did:key:zDn...#zDn...`` (did:key method specification: the
  fragment is the multibase-encoded key, i.e. the method-specific identifier).
- ``jwk_thumbprint``: the RFC 7638 thumbprint, base64url(SHA-256) of the canonical JSON
  ``{"crv","kty","x","y"}`` (section 3.2: those members only, in lexicographic order, no
  whitespace), for registrations by ``jwks_uri``.

Every form is a function of the public key alone, so a verifier holding only the client_id
(a did:key) can tell whether a ``kid`` names that key (:func:`kid_names_did`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import ConfigError, DidError
from broker.keys.api import ES256, Signer
from broker.keys.didkey import DID_KEY_PREFIX, did_from_public_key, public_jwk, public_key_from_did


class KidFormat(StrEnum):
    DID = "did"
    DID_URL = "did_url"
    JWK_THUMBPRINT = "jwk_thumbprint"


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 section 3 thumbprint (SHA-256) of a P-256 public key, base64url without padding."""
    jwk = public_jwk(public_key)
    canonical = json.dumps(
        {name: jwk[name] for name in ("crv", "kty", "x", "y")},
        separators=(",", ":"),
        sort_keys=True,
    ).encode("ascii")
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def did_url(did: str) -> str:
    """``did:key:z...#z...``: the did:key DID URL of its one verification method."""
    if not did.startswith(DID_KEY_PREFIX) or "#" in did:
        raise DidError("a did:key DID URL is built from a bare did:key")
    return f"{did}#{did[len(DID_KEY_PREFIX) :]}"


def kid_for(public_key: ec.EllipticCurvePublicKey, kid_format: KidFormat) -> str:
    """The ``kid`` of ``public_key`` in ``kid_format``: the one function every JWS signer and
    the JWKS endpoint use."""
    if kid_format is KidFormat.DID:
        return did_from_public_key(public_key)
    if kid_format is KidFormat.DID_URL:
        return did_url(did_from_public_key(public_key))
    return jwk_thumbprint(public_key)


@functools.lru_cache(maxsize=16)
def _kids_of_did(did: str) -> frozenset[str]:
    public_key = public_key_from_did(did)
    return frozenset(kid_for(public_key, kid_format) for kid_format in KidFormat)


def kid_names_did(kid: str, did: str) -> bool:
    """Whether ``kid`` is, in any :class:`KidFormat`, the kid of the key of the did:key ``did``
    (False for a did that does not decode to a P-256 key)."""
    try:
        return kid in _kids_of_did(did)
    except DidError:
        return False


def signing_jwk(public_key: ec.EllipticCurvePublicKey, kid_format: KidFormat) -> dict[str, str]:
    """The public JWK as published for verifiers: ``kty``, ``crv``, ``x``, ``y``, ``kid``,
    ``alg`` ES256, ``use`` sig. Built from the public key only: no private member can appear."""
    jwk = public_jwk(public_key, kid=kid_for(public_key, kid_format))
    jwk["alg"] = ES256
    jwk["use"] = "sig"
    return jwk


@dataclass(frozen=True)
class KidSigner:
    """A :class:`Signer` that signs with ``inner`` under another ``kid`` (same key)."""

    inner: Signer = field(repr=False)
    kid: str

    @property
    def alg(self) -> str:
        return self.inner.alg

    @property
    def mechanism(self) -> str:
        return self.inner.mechanism

    def sign(self, message: bytes) -> bytes:
        return self.inner.sign(message)


def with_kid_format(
    signer: Signer, public_key: ec.EllipticCurvePublicKey, kid_format: KidFormat
) -> Signer:
    """``signer`` naming its key by ``kid_format``. ``signer`` must sign with ``public_key``'s
    private half and carry the bare did as its kid (what the key stores give)."""
    if signer.kid != did_from_public_key(public_key):
        raise ConfigError("the signer's key is not the given public key")
    if kid_format is KidFormat.DID:
        return signer
    return KidSigner(signer, kid_for(public_key, kid_format))
