"""Domain values to and from protobuf messages (the only place both meet)."""

from __future__ import annotations

import enum
import math

from google.protobuf.timestamp_pb2 import Timestamp

from broker.server.gen.broker.v1 import broker_pb2 as pb
from broker.server.ports import AccessTokenView, LoginView
from broker.tokens.model import Grant, GrantStatus, GrantSummary

_LOGIN_STATES = {
    "PENDING": pb.LOGIN_STATE_PENDING,
    "COMPLETED": pb.LOGIN_STATE_COMPLETED,
    "FAILED": pb.LOGIN_STATE_FAILED,
    "EXPIRED": pb.LOGIN_STATE_EXPIRED,
}
_GRANT_STATUSES = {
    GrantStatus.ACTIVE: pb.GRANT_STATUS_ACTIVE,
    GrantStatus.REAUTHORIZATION_REQUIRED: pb.GRANT_STATUS_REAUTHORIZATION_REQUIRED,
    GrantStatus.REVOKED: pb.GRANT_STATUS_REVOKED,
}


def timestamp(epoch_seconds: float) -> Timestamp:
    """Epoch seconds (float) as a Timestamp, exact to the float's precision."""
    seconds = math.floor(epoch_seconds)
    nanos = round((epoch_seconds - seconds) * 1_000_000_000)
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    return Timestamp(seconds=seconds, nanos=nanos)


def access_token(tok: AccessTokenView) -> pb.AccessToken:
    return pb.AccessToken(
        access_token=tok.access_token,
        token_type=tok.token_type,
        expires_at=timestamp(tok.expires_at),
        scope=tok.scope,
        subject=tok.subject,
        grant_id=tok.grant_id,
    )


def login_state(state: enum.Enum | str) -> pb.LoginState:
    """Map the login service's state (enum member or name) to the proto enum."""
    name = state.name if isinstance(state, enum.Enum) else state
    try:
        return _LOGIN_STATES[name.upper()]
    except KeyError:
        raise ValueError("login service returned an unknown login state") from None


def login(view: LoginView) -> pb.Login:
    return pb.Login(
        login_id=view.login_id,
        state=login_state(view.state),
        authorization_url=view.authorization_url or "",
        expires_at=timestamp(view.expires_at),
        grant_id=view.grant_id or "",
        error=view.error or "",
    )


def grant(g: Grant | GrantSummary) -> pb.Grant:
    """A grant without its tokens."""
    return pb.Grant(
        grant_id=g.grant_id,
        label=g.label,
        issuer=g.issuer,
        client_id=g.client_id,
        subject=g.subject,
        scope=g.scope,
        status=_GRANT_STATUSES[g.status],
        access_expires_at=timestamp(g.access_expires_at),
        created_at=timestamp(g.created_at),
        updated_at=timestamp(g.updated_at),
        last_error=g.last_error or "",
    )
