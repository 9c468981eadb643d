"""When a failed code exchange restarts a login in the same browser.

A new authorization can cure a transient failure of the token endpoint (5xx, an empty 500,
timeout, connection error: the code may be spent or not, either way a new one is needed) and, in
DOME compatibility mode, ``invalid_grant`` on a fresh code (the Verifier overwrote the pending
authorization). Both share one budget per login.
"""

from __future__ import annotations

from broker.errors import AuthServerUnavailable, BrokerError, InvalidGrant, UnexpectedResponse

MAX_RESTARTS = 1
#: Failures of the code exchange after which a new authorization may succeed: the token
#: endpoint's 5xx / timeout / connection error (AuthServerUnavailable) and an unusable answer
#: (UnexpectedResponse: e.g. an empty body with a 500).
TRANSIENT_EXCHANGE_ERRORS: tuple[type[BrokerError], ...] = (
    AuthServerUnavailable,
    UnexpectedResponse,
)


def restart_reason(
    exc: BrokerError, *, restarts: int, max_restarts: int, dome_compat: bool
) -> str | None:
    """Why a failed exchange restarts a login that has restarted ``restarts`` times already
    (``None``: it ends the login)."""
    if restarts >= max_restarts:
        return None
    if isinstance(exc, TRANSIENT_EXCHANGE_ERRORS):
        return exc.reason
    if isinstance(exc, InvalidGrant) and dome_compat:
        return exc.reason  # DOME bug 1: the Verifier overwrote this code
    return None
