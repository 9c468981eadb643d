"""Which refresher refreshes a grant (deployment binding).

Given the active deployment identity (the issuer and client_id the refresher sends to; serve
passes the OAuth client's), a grant whose stored issuer or client_id differs is never
refreshed: its refresh token is not sent, :class:`broker.errors.DeploymentMismatch` (not
retryable) is raised. During a key rotation (other identities) a grant of another recorded
identity is refreshed through THAT identity's refresher (its own key and client_id), never the
active one's; machine grants are renewed only as the active identity.
"""

from __future__ import annotations

from broker.errors import DeploymentMismatch
from broker.tokens.model import Grant, GrantKind
from broker.tokens.ports import Refresher
from broker.tokens.settings import Identities
from broker.tokens.stores.deployment import grant_owner_text
from broker.tokens.stores.identities import IdentityRefresher, IdentityRefreshers


class GrantRouting:
    def __init__(self, refresher: Refresher, identities: Identities | None) -> None:
        self._refresher = refresher
        self._identities = identities
        self._routes = (
            None
            if identities is None
            else IdentityRefreshers(
                [IdentityRefresher(identities.active, refresher), *identities.others]
            )
        )

    def refresher_for(self, grant: Grant) -> Refresher:
        """The refresher of the identity that created ``grant`` (its own key and client_id).
        Raises DeploymentMismatch (before anything is sent) for a grant of no identity this
        broker holds, and for a machine grant of another than the active identity."""
        if self._routes is None or self._identities is None:
            return self._refresher
        active = self._identities.active
        if grant.kind is GrantKind.MACHINE and not active.owns(grant.issuer, grant.client_id):
            raise DeploymentMismatch(
                f"machine grant {grant.grant_id} is of "
                f"{grant_owner_text(grant.issuer, grant.client_id)}; machine grants renew "
                f"only as the active {grant_owner_text(active.issuer, active.client_id)}"
            )
        return self._routes.for_grant(grant.grant_id, grant.issuer, grant.client_id)
