"""Proof Key for Code Exchange (RFC 7636), S256 only."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field

from broker.errors import InvalidArgument

S256 = "S256"
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 section 4.1


def new_code_verifier() -> str:
    """A fresh verifier (RFC 7636 section 4.1): 32 random bytes (256 bits), base64url, 43 chars."""
    return secrets.token_urlsafe(32)


def code_challenge_s256(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(code_verifier)))`` (RFC 7636 section 4.2)."""
    if not isinstance(verifier, str) or not _VERIFIER.match(verifier):
        raise InvalidArgument("code_verifier must be 43-128 unreserved characters (RFC 7636 4.1)")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Pkce:
    """One PKCE pair; the verifier is a secret until the code exchange."""

    verifier: str = field(repr=False)
    challenge: str
    method: str = S256


def new_pkce() -> Pkce:
    verifier = new_code_verifier()
    return Pkce(verifier=verifier, challenge=code_challenge_s256(verifier))
