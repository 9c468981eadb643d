"""The real domain services satisfy the server's ports (checked by mypy --strict on this file)."""

from __future__ import annotations

from broker.login import LoginService as RealLoginService
from broker.login import LoginState, LoginView
from broker.server import convert, ports
from broker.server.gen.broker.v1 import broker_pb2 as pb
from broker.tokens.broker import TokenBroker as RealTokenBroker
from broker.tokens.model import AccessToken


def as_ports(
    broker: RealTokenBroker, logins: RealLoginService, token: AccessToken, view: LoginView
) -> tuple[ports.TokenService, ports.LoginService, ports.AccessTokenView, ports.LoginView]:
    return broker, logins, token, view


def test_real_login_view_converts_every_state() -> None:
    for state, expected in [
        (LoginState.PENDING, pb.LOGIN_STATE_PENDING),
        (LoginState.COMPLETED, pb.LOGIN_STATE_COMPLETED),
        (LoginState.FAILED, pb.LOGIN_STATE_FAILED),
        (LoginState.EXPIRED, pb.LOGIN_STATE_EXPIRED),
    ]:
        view = LoginView(
            login_id="l-1",
            label="crm",
            state=state,
            authorization_url=None,
            expires_at=1_800_000_000.25,
        )
        msg = convert.login(view)
        assert msg.state == expected
        assert msg.authorization_url == ""
        assert msg.expires_at.seconds == 1_800_000_000
        assert msg.expires_at.nanos == 250_000_000
