"""How the token core records a failed refresh: the store's last error, one log line, and the
best-effort audit events of a grant (``grant.reauthorization_required`` A05,
``grant.revoked``, ``token.refresh_rejected`` B10)."""

from __future__ import annotations

import logging

from broker.audit.events import AuditAction, AuditEvent, Outcome, identifier, reason_code
from broker.audit.trail import AuditTrail
from broker.errors import BrokerError
from broker.tokens.model import Grant
from broker.tokens.stores.base import GrantStore

_log = logging.getLogger("broker.tokens.broker")  # the token core's log name


async def record_error(store: GrantStore, grant_id: str, exc: BrokerError) -> None:
    """The grant's last error, for operators; a store that cannot take it is only logged."""
    try:
        await store.record_error(grant_id, exc.reason)
    except BrokerError as store_exc:
        _log.warning("could not record refresh error for grant %s: %s", grant_id, store_exc.reason)


def warn_refresh_failed(grant_id: str, exc: BrokerError) -> None:
    """Every failed refresh of a grant, once, by grant id and reason (never a token)."""
    _log.warning(
        "refresh of grant %s failed: %s (%s)",
        grant_id,
        exc.reason,
        "retryable" if exc.retryable else "not retryable: an operator has to act",
    )


async def audit_grant(
    audit: AuditTrail, action: AuditAction, grant: Grant, outcome: Outcome, reason: str
) -> None:
    """Best effort (retried once, then logged and counted): see :mod:`broker.audit.trail`."""
    await audit.note(
        AuditEvent(
            action,
            outcome,
            grant_id=grant.grant_id,
            label=identifier(grant.label),
            subject=identifier(grant.subject),
            reason=reason_code(reason),
        )
    )
