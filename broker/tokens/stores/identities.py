"""Several deployment identities in one store: the key-rotation overlap.

During a key rotation (``broker keys rotate``) a store records two identities (the old key's
did and the new one's: in DOME each did is its own client). Every grant is refreshed with the
key of the identity that created it (its stored ``client_id``), never with another: the AS
bound its refresh token to that client. :class:`IdentityRefreshers` picks the refresher for a
grant; :class:`IdentityLedger` is the store's ability to record identities and their rotation
state (what the ceremony writes and ``serve`` reads at start).

Everything here is public (issuer, client id, did, key URI without PIN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from broker.errors import DeploymentMismatch
from broker.tokens.ports import Refresher
from broker.tokens.stores.base import GrantIndex
from broker.tokens.stores.deployment import (
    DeploymentIdentity,
    IdentityState,
    RecordedIdentity,
    grant_owner_text,
)
from broker.tokens.stores.logins import GrantAndLoginStore


class IdentityLedger(Protocol):
    """The identity record of a store, writable by the rotation ceremony."""

    async def identities(self) -> Sequence[RecordedIdentity]:
        """Primary first."""
        ...

    async def add_identity(
        self, identity: DeploymentIdentity, *, state: IdentityState, key_uri: str | None
    ) -> RecordedIdentity:
        """Record ``identity`` (role ``added``, how ``ceremony``); raise
        :class:`broker.errors.InvalidArgument` when it is recorded already."""
        ...

    async def set_identity(
        self,
        identity: DeploymentIdentity,
        *,
        state: IdentityState | None = None,
        key_uri: str | None = None,
    ) -> RecordedIdentity:
        """Change the state and/or the key URI of a recorded identity (None: unchanged);
        raise :class:`broker.errors.InvalidArgument` when it is not recorded."""
        ...


class LedgerStore(GrantAndLoginStore, GrantIndex, IdentityLedger, Protocol):
    """What serve and the rotation ceremony open: the SQLite and PostgreSQL stores."""


@dataclass(frozen=True)
class IdentityRefresher:
    """The refresher that talks to the AS as ``identity`` (signs with its key)."""

    identity: DeploymentIdentity
    refresher: Refresher


class IdentityRefreshers:
    """Which refresher a grant's refresh token goes through: the one of the identity whose
    issuer and client_id the grant carries. A grant of no known identity is refused before
    anything is sent (:class:`DeploymentMismatch`)."""

    def __init__(self, routes: Sequence[IdentityRefresher]) -> None:
        self._routes = tuple(routes)

    @property
    def identities(self) -> tuple[DeploymentIdentity, ...]:
        return tuple(r.identity for r in self._routes)

    def for_grant(self, grant_id: str, issuer: str, client_id: str) -> Refresher:
        for route in self._routes:
            if route.identity.owns(issuer, client_id):
                return route.refresher
        names = "; ".join(grant_owner_text(i.issuer, i.client_id) for i in self.identities)
        raise DeploymentMismatch(
            f"grant {grant_id} is of {grant_owner_text(issuer, client_id)}, but this broker "
            f"refreshes only as {names or 'no identity'}: its refresh token is not sent"
        )
