"""The domain services the gRPC adapter calls, as structural protocols.

The token core (``broker/tokens/broker.py``) and the login service (``broker/login/service.py``)
satisfy these without importing this module; tests use fakes. Values are read through
read-only properties so frozen dataclasses match.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from broker.tokens.model import Grant, GrantSummary


class AccessTokenView(Protocol):
    """An access token handed to a caller (``broker.tokens`` ``AccessToken``)."""

    @property
    def access_token(self) -> str: ...
    @property
    def expires_at(self) -> float:
        """Absolute expiry, epoch seconds."""
        ...

    @property
    def scope(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def grant_id(self) -> str: ...
    @property
    def token_type(self) -> str: ...


class LoginView(Protocol):
    """One interactive login (``broker.login`` ``LoginView``).

    ``state`` is PENDING / COMPLETED / FAILED / EXPIRED: an enum member with that name (or a
    str of it, any case).
    """

    @property
    def login_id(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def state(self) -> enum.Enum | str: ...
    @property
    def authorization_url(self) -> str | None: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def grant_id(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...


class TokenService(Protocol):
    """What the servicer needs of the token core (``broker.tokens.broker.TokenBroker``, named
    apart from it and from the gRPC service ``broker.v1.TokenBroker``): cached access tokens by
    grant, one refresh at a time per grant."""

    async def get_access_token(self, grant_id: str, *, min_ttl: float) -> AccessTokenView:
        """A token valid for at least ``min_ttl`` seconds (RFC 6749 section 6 refresh if not).

        Raises GrantNotFound, ReauthorizationRequired / InvalidGrant, or a retryable
        BrokerError."""
        ...

    def watch(self, grant_id: str) -> AsyncIterator[AccessTokenView]:
        """The current token, then each renewal, until the caller stops iterating."""
        ...

    async def get_grant(self, grant_id: str) -> Grant: ...

    async def list_grants(self, label: str | None) -> Sequence[Grant | GrantSummary]:
        """Clear columns only are used (a GrantSummary carries no token)."""
        ...

    async def revoke_grant(self, grant_id: str) -> object:
        """Revoke the grant (the result, if any, is not used)."""
        ...


class LoginService(Protocol):
    """Interactive logins: authorization code flow with a signed request object.

    Every login belongs to the caller that started it (``owner``, the caller identity name);
    ``get`` and ``complete`` find only ``owner``'s logins and raise LoginNotFound, with the
    same message as for an unknown login, for any other.
    """

    async def start(self, *, label: str, owner: str) -> LoginView:
        """Build a request object (RFC 9101) and the authorization URL for a new login."""
        ...

    async def complete(
        self,
        *,
        code: str | None,
        state: str,
        iss: str | None,
        error: str | None = None,
        owner: str,
        authorize: Callable[[str], None],
    ) -> LoginView:
        """Check an authorization response (RFC 6749 4.1.2, RFC 9207) and exchange the code.

        ``authorize(label)`` runs before anything happens to the login and raises to refuse. A
        rejected response leaves the login as it was."""
        ...

    async def get(self, login_id: str, *, owner: str) -> LoginView:
        """Raise LoginNotFound when unknown or not ``owner``'s."""
        ...
