"""Values that cross from the OAuth client into the token core."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenSet:
    """A validated token-endpoint response (RFC 6749 section 5.1).

    ``expires_at`` is absolute (epoch seconds), computed on receipt from ``expires_in``.
    ``refresh_token`` is the one to use next: on a refresh response without one, the old one.
    ``id_claims`` are the validated id_token claims (may hold PII: never logged).
    ``refresh_expires_at`` is absolute, from the AS's ``refresh_expires_in`` when it sent one.
    """

    access_token: str = field(repr=False)
    token_type: str
    expires_at: float
    received_at: float
    scope: str
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    id_claims: Mapping[str, Any] = field(default_factory=dict, repr=False)
    refresh_expires_at: float | None = None

    @property
    def subject(self) -> str | None:
        sub = self.id_claims.get("sub")
        return sub if isinstance(sub, str) else None
