"""What callers (the gRPC adapter, the HTTPS listener) may know about a login."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from broker.tokens.stores.logins import LoginRecord, LoginStatus


class LoginState(enum.StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


_VIEW_STATE = {
    LoginStatus.PENDING: LoginState.PENDING,
    LoginStatus.EXCHANGING: LoginState.PENDING,
    LoginStatus.COMPLETED: LoginState.COMPLETED,
    LoginStatus.FAILED: LoginState.FAILED,
    LoginStatus.EXPIRED: LoginState.EXPIRED,
}


@dataclass(frozen=True)
class LoginView:
    """What callers may know about a login. The authorization URL carries ``state`` and
    ``nonce`` (the user agent needs them), so it is kept out of ``repr``. ``restart_reason``
    says why a pending login was just restarted by this response (``None`` otherwise)."""

    login_id: str
    label: str
    state: LoginState
    authorization_url: str | None = field(repr=False)
    expires_at: float
    grant_id: str | None = None
    error: str | None = None
    restarted: bool = False
    restart_reason: str | None = None


def view_of(login: LoginRecord) -> LoginView:
    """The caller's view of a stored login (the authorization URL only while pending)."""
    state = _VIEW_STATE[login.status]
    url = login.secrets.authorization_url if login.secrets is not None else None
    return LoginView(
        login_id=login.login_id,
        label=login.label,
        state=state,
        authorization_url=url if state is LoginState.PENDING else None,
        expires_at=login.expires_at,
        grant_id=login.grant_id,
        error=login.error,
        restarted=login.restarts > 0,
    )
