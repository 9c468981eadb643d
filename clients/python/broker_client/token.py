"""The access token as this package hands it out, and its freshness rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_MARGIN = 30.0  # seconds a served token must still be valid


class _TimestampLike(Protocol):
    seconds: int
    nanos: int


class _AccessTokenMessage(Protocol):
    access_token: str
    token_type: str
    scope: str
    subject: str
    grant_id: str

    @property
    def expires_at(self) -> _TimestampLike: ...


@dataclass(frozen=True)
class AccessToken:
    """One access token of a grant. ``access_token`` is a secret: it is kept out of ``repr``."""

    access_token: str = field(repr=False)
    token_type: str
    expires_at: float  # epoch seconds, as the broker states it
    scope: str
    subject: str
    grant_id: str

    @classmethod
    def from_proto(cls, message: _AccessTokenMessage) -> AccessToken:
        ts = message.expires_at
        return cls(
            access_token=message.access_token,
            token_type=message.token_type or "Bearer",
            expires_at=ts.seconds + ts.nanos / 1e9,
            scope=message.scope,
            subject=message.subject,
            grant_id=message.grant_id,
        )

    def usable(self, now: float, margin: float) -> bool:
        """Still valid for more than ``margin`` seconds at ``now``."""
        return self.expires_at - now > margin

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value (RFC 6750 2.1)."""
        return f"Bearer {self.access_token}"


def newer(current: AccessToken | None, candidate: AccessToken) -> AccessToken:
    """The token to keep of two: the one that expires later (a slow answer to an earlier call
    must not replace a renewal the watch stream already delivered)."""
    if current is None or candidate.expires_at >= current.expires_at:
        return candidate
    return current
