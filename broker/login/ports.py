"""What the login service needs from its neighbours, as small role interfaces."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from broker.oauth.metadata import ServerMetadata
from broker.oauth.types import TokenSet
from broker.tokens.model import Grant

LabelCheck = Callable[[str], None]
"""Called with a login's label before anything happens to it; raises (PermissionDenied) to
refuse."""


class LoginClient(Protocol):
    """What the login flow needs from :class:`broker.oauth.client.OAuthClient`."""

    async def metadata(self) -> ServerMetadata: ...

    async def exchange_code(
        self, code: str, *, code_verifier: str | None, nonce: str | None
    ) -> TokenSet: ...

    async def push_authorization_request(self, request_object: str) -> tuple[str, float]: ...

    def exchange_gate(self) -> AbstractAsyncContextManager[None]: ...


class GrantSink(Protocol):
    """Where a completed login hands its new grant (implemented by the token core,
    :meth:`broker.tokens.broker.TokenBroker.add_grant`). The login needs only the new grant's
    id back."""

    async def add_grant(
        self, tokens: TokenSet, *, label: str, issuer: str, client_id: str
    ) -> Grant: ...
