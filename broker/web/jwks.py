"""The client's public key set (RFC 7517 section 5) at ``[web].jwks_path`` on the HTTPS listener.

For authorization servers that register the client by ``jwks_uri`` (OIDC Dynamic Client
Registration section 2; RFC 7591 section 2) rather than by a did-derived ``jwkSetUrl``. The set
holds every key the broker signs with or is about to (:class:`PublicKeySource`: for now the
client key; key rotation adds the next one), each as :func:`broker.keys.kid.signing_jwk` with the
same ``kid`` the JWS headers carry.

Response: ``application/jwk-set+json`` (RFC 7517 section 8.5.1), ``Cache-Control: public,
max-age=N``, a strong ``ETag`` (SHA-256 of the body); ``If-None-Match`` is compared weakly
(RFC 9110 section 13.1.2) and answered 304. GET and HEAD only.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import InvalidArgument
from broker.keys.kid import KidFormat, signing_jwk

JWK_SET_MEDIA_TYPE = "application/jwk-set+json"
DEFAULT_JWKS_PATH = "/.well-known/jwks.json"
DEFAULT_MAX_AGE = 300
MAX_MAX_AGE = 86_400


class PublicKeySource(Protocol):
    """The public keys to publish, current first. Called on every request (cheap, no I/O)."""

    def __call__(self) -> Sequence[ec.EllipticCurvePublicKey]: ...


@dataclass(frozen=True)
class StaticKeys:
    """A :class:`PublicKeySource` of fixed keys (the configured client key)."""

    keys: tuple[ec.EllipticCurvePublicKey, ...] = field(repr=False)

    def __call__(self) -> Sequence[ec.EllipticCurvePublicKey]:
        return self.keys


def check_jwks_path(path: str) -> str:
    """An absolute path without query, fragment, dot segments or empty segments."""
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
        raise InvalidArgument("the JWKS path must be an absolute path starting with one '/'")
    parts = urlsplit(path)
    if "?" in path or "#" in path or parts.path != path:
        raise InvalidArgument("the JWKS path must not have a query or a fragment")
    segments = path.split("/")[1:]
    if any(s in ("", ".", "..") for s in segments) or any(ch.isspace() or ch == "%" for ch in path):
        raise InvalidArgument(
            "the JWKS path must not have empty, '.' or '..' segments, spaces or escapes"
        )
    return path


@dataclass(frozen=True)
class JwksDocument:
    body: bytes
    etag: str  # quoted, strong


def jwks_document(keys: Sequence[ec.EllipticCurvePublicKey], kid_format: KidFormat) -> JwksDocument:
    """``{"keys": [...]}`` with one :func:`signing_jwk` per distinct key, in order."""
    jwks: list[dict[str, str]] = []
    for key in keys:
        jwk = signing_jwk(key, kid_format)
        if jwk not in jwks:
            jwks.append(jwk)
    body = json.dumps({"keys": jwks}, separators=(",", ":")).encode("ascii")
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=")
    return JwksDocument(body=body, etag='"' + digest.decode("ascii") + '"')


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 section 13.1.2: ``*`` or any listed entity tag equal to ``etag`` under weak
    comparison (a ``W/`` prefix is ignored)."""
    value = if_none_match.strip()
    if value == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in value.split(","))


@dataclass(frozen=True)
class JwksEndpoint:
    """What the listener needs to serve the key set."""

    source: PublicKeySource = field(repr=False)
    kid_format: KidFormat = KidFormat.DID
    path: str = DEFAULT_JWKS_PATH
    max_age: int = DEFAULT_MAX_AGE

    def __post_init__(self) -> None:
        check_jwks_path(self.path)
        if not 0 <= self.max_age <= MAX_MAX_AGE:
            raise InvalidArgument(f"the JWKS max-age must be within [0, {MAX_MAX_AGE}]")

    def document(self) -> JwksDocument:
        return jwks_document(self.source(), self.kid_format)
