"""AS errors through the token core: the classification callers see (gRPC status) and the log
records operators see. Real OAuth client, real token core, memory store; the AS is the
hostile fake behind httpx.MockTransport."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest

from broker.errors import (
    AuthServerUnavailable,
    ClientAuthenticationFailed,
    ReauthorizationRequired,
)
from broker.keys.soft import SoftKeyStore
from broker.oauth.client import OAuthClient
from broker.oauth.config import ClientConfig
from broker.oauth.types import TokenSet
from broker.server.errors import to_status
from broker.tokens.broker import TokenBroker
from broker.tokens.model import GrantStatus
from broker.tokens.settings import Seams
from broker.tokens.stores.memory import MemoryGrantStore
from tests.clock import FakeClock
from tests.oauth.fakeas import ISSUER, REDIRECT_URI, FakeAS

SECRETS = ("rt-initial", "at-initial", "client_assertion", "eyJ")


@dataclass
class Core:
    fake_as: FakeAS
    clock: FakeClock
    store: MemoryGrantStore
    broker: TokenBroker
    config: ClientConfig
    grant_id: str


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    keys = SoftKeyStore()
    keys.generate("client", b"\x01")
    signer = keys.signer("client")
    config = ClientConfig(issuer=ISSUER, client_id=signer.kid, redirect_uri=REDIRECT_URI)
    clock = FakeClock(now=float(int(time.time())))
    fake_as = FakeAS()
    store = MemoryGrantStore(clock)

    async def no_sleep(_delay: float) -> None:
        return None

    async with fake_as.client() as http:
        client = OAuthClient(config, http, signer, clock, sleep=no_sleep)
        broker = TokenBroker(store, client, clock, seams=Seams(rng=random.Random(1)))
        tokens = TokenSet(
            access_token="at-initial",
            token_type="Bearer",
            expires_at=clock.now() + 300,
            received_at=clock.now(),
            scope="openid",
            refresh_token="rt-initial",
            id_claims={"sub": "did:key:zUser"},
        )
        grant = await broker.add_grant(
            tokens, label="svc", issuer=config.issuer, client_id=config.client_id
        )
        clock.advance(299)  # the access token is (nearly) expired: the next call refreshes
        yield Core(fake_as, clock, store, broker, config, grant.grant_id)


def _no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        text = record.getMessage()
        assert not any(secret in text for secret in SECRETS), text


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(401, json={"error": "invalid_client"}), httpx.Response(401)],
    ids=["invalid_client", "bare_401"],
)
async def test_invalid_client_is_failed_precondition_logged_at_error_and_grant_kept(
    core: Core, caplog: pytest.LogCaptureFixture, answer: httpx.Response
) -> None:
    core.fake_as.token = lambda _r: answer
    with caplog.at_level(logging.INFO), pytest.raises(ClientAuthenticationFailed) as info:
        await core.broker.get_access_token(core.grant_id)
    exc = info.value
    assert exc.reason == "client_authentication_failed" and not exc.retryable
    assert to_status(exc) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "broker cannot authenticate to the authorization server: client_authentication_failed",
    )
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    cause = errors[0].getMessage()
    assert "Trusted Services List" in cause and "jwkSetUrl" in cause and "kid" in cause
    assert core.config.client_id in cause
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(core.grant_id in w and "client_authentication_failed" in w for w in warnings)
    _no_secrets(caplog)
    # Our key is the problem, not the grant: it is not buried, its refresh token is kept.
    grant = await core.store.get(core.grant_id)
    assert grant.status is GrantStatus.ACTIVE and grant.refresh_token == "rt-initial"
    # Not retried by the core either: the next call fails fast from the back-off.
    with pytest.raises(ClientAuthenticationFailed):
        await core.broker.get_access_token(core.grant_id)
    assert len(core.fake_as.token_forms()) == 1


async def test_every_failed_refresh_logs_a_warning_with_the_grant_id(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    core.fake_as.token = lambda _r: httpx.Response(503)
    with caplog.at_level(logging.INFO), pytest.raises(AuthServerUnavailable) as info:
        await core.broker.get_access_token(core.grant_id)
    assert to_status(info.value)[0] is grpc.StatusCode.UNAVAILABLE
    attempts = core.config.refresh_max_attempts
    assert len(core.fake_as.token_forms()) == attempts
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    retried = [w for w in warnings if "refresh attempt" in w]
    assert len(retried) == attempts - 1 and all("as_unavailable" in w for w in retried)
    final = [w for w in warnings if core.grant_id in w]
    assert len(final) == 1
    assert "as_unavailable" in final[0] and "retryable" in final[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    _no_secrets(caplog)


async def test_a_dying_grant_logs_a_warning_with_grant_id_and_reason(
    core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    core.fake_as.token = lambda _r: httpx.Response(400, json={"error": "invalid_grant"})
    with caplog.at_level(logging.INFO), pytest.raises(ReauthorizationRequired) as info:
        await core.broker.get_access_token(core.grant_id)
    assert to_status(info.value)[0] is grpc.StatusCode.FAILED_PRECONDITION
    dead = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and core.grant_id in r.getMessage()
    ]
    assert len(dead) == 1
    assert "invalid_grant" in dead[0] and "re-authorization required" in dead[0]
    _no_secrets(caplog)
