"""What the token core needs from the OAuth client, as small role interfaces."""

from __future__ import annotations

from typing import Protocol

from broker.oauth.types import TokenSet


class Refresher(Protocol):
    """Runs the refresh_token grant (RFC 6749 section 6) against the AS.

    Raises :class:`broker.errors.InvalidGrant` when the grant is dead (``invalid_grant``, or
    DOME's empty-bodied 403/500), a retryable :class:`broker.errors.BrokerError` (``retryable``
    True) for transport trouble, 5xx and 429, and :class:`broker.errors.TokenValidationError`
    when a returned id_token fails validation (including an ``iss`` or ``sub`` that differs from
    the grant's: OIDC Core 12.2). Each HTTP attempt carries a fresh HSM-signed client assertion.
    In DOME compatibility mode it waits while a code exchange of the same client is pending.
    """

    async def refresh(self, refresh_token: str, *, subject: str) -> TokenSet: ...


class MachineTokenSource(Protocol):
    """Acquires a machine access token with the client credentials grant (RFC 6749 section
    4.4; DOME: the LEARCredentialMachine in the client assertion). No refresh token: a machine
    grant re-acquires the same way before expiry.

    Raises :class:`broker.errors.CredentialError` when the credential fails the local checks
    (nothing sent), :class:`broker.errors.MachineGrantRejected` for the Verifier's empty 403,
    :class:`broker.errors.ClientAuthenticationFailed` for ``invalid_client`` (none retryable),
    and a retryable :class:`broker.errors.BrokerError` for transport trouble, 5xx and 429.
    """

    async def acquire(self, *, label: str, scope: str) -> TokenSet: ...
