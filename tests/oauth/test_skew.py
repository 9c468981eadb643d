"""C09: clock skew against the AS, detected from the HTTP ``Date`` of every AS response.

The fake AS enforces the FAPI 2.0 window on the client assertion (``iat`` at most 10 s in its
future, at most 60 s in its past) on its own clock: ours plus ``offset``. Its ``Date`` header
says so, on discovery, JWKS and token responses alike.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from broker.errors import (
    ClientAuthenticationFailed,
    ClockSkewSuspected,
    ConfigError,
    OAuthErrorResponse,
)
from broker.keys.soft import SoftSigner
from broker.oauth.client import OAuthClient
from broker.oauth.config import ClientConfig
from broker.oauth.skew import SkewMonitor, parse_http_date
from broker.oauth.types import TokenSet
from broker.tokens.broker import TokenBroker
from broker.tokens.settings import Seams
from broker.tokens.stores.memory import MemoryGrantStore
from tests.clock import FakeClock
from tests.oauth.fakeas import FakeAS, form_of

FUTURE_LIMIT = 10
PAST_LIMIT = 60


class SkewedAS:
    """FakeAS whose clock is ``offset`` seconds off ours, checking assertion times."""

    def __init__(self, fake_as: FakeAS, clock: FakeClock, offset: float) -> None:
        self.fake_as = fake_as
        self.clock = clock
        self.offset = offset
        self.assertion_iats: list[int] = []
        fake_as.token = self.token

    def now(self) -> float:
        return self.clock.now() + self.offset

    def token(self, request: httpx.Request) -> httpx.Response:
        assertion = form_of(request)["client_assertion"]
        payload = assertion.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
        iat = int(claims["iat"])
        self.assertion_iats.append(iat)
        now = self.now()
        if iat > now + FUTURE_LIMIT or iat < now - PAST_LIMIT or claims["exp"] <= now:
            return httpx.Response(401, json={"error": "invalid_client"})
        return httpx.Response(
            200,
            json={
                "access_token": f"at-{len(self.assertion_iats)}",
                "token_type": "Bearer",
                "expires_in": 300,
                "refresh_token": f"rt-{len(self.assertion_iats)}",
            },
        )

    async def handle(self, request: httpx.Request) -> httpx.Response:
        response = await self.fake_as.handle(request)
        response.headers["Date"] = formatdate(self.now(), usegmt=True)
        return response

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


class Recorder:
    def __init__(self) -> None:
        self.offsets: list[float] = []

    def skew_measured(self, offset: float) -> None:
        self.offsets.append(offset)


def monitor(
    clock: FakeClock, *, compensate: bool = False, observer: Recorder | None = None
) -> SkewMonitor:
    return SkewMonitor(clock, alarm_threshold=60.0, compensate=compensate, observer=observer)


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and r.name == "broker.oauth.skew"
    ]


async def test_c09_plus_8_s_works_and_warns_once(
    fake_as: FakeAS,
    clock: FakeClock,
    config: ClientConfig,
    signer: SoftSigner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    skewed = SkewedAS(fake_as, clock, 8)
    recorder = Recorder()
    skew = monitor(clock, observer=recorder)
    async with skewed.client() as http:
        client = OAuthClient(config, http, signer, clock, skew=skew)
        with caplog.at_level(logging.INFO, logger="broker.oauth.skew"):
            for n in range(3):
                tokens = await client.refresh(f"rt-{n}", subject="did:key:zUser")
                assert tokens.access_token == f"at-{n + 1}"
    assert skew.offset == 8
    assert recorder.offsets == [8.0] * 4  # discovery + three token responses
    assert len(messages(caplog, logging.WARNING)) == 1
    assert messages(caplog, logging.ERROR) == []
    assert skewed.assertion_iats == [int(clock.now())] * 3  # not compensated by default


@pytest.mark.parametrize("offset", [90, -90])
async def test_c09_90_s_invalid_client_is_clock_skew_suspected_and_not_retried(  # noqa: PLR0917
    fake_as: FakeAS,
    clock: FakeClock,
    config: ClientConfig,
    signer: SoftSigner,
    caplog: pytest.LogCaptureFixture,
    offset: int,
) -> None:
    skewed = SkewedAS(fake_as, clock, offset)
    skew = monitor(clock)
    async with skewed.client() as http:
        client = OAuthClient(config, http, signer, clock, skew=skew)
        with (
            caplog.at_level(logging.WARNING, logger="broker.oauth.skew"),
            pytest.raises(ClockSkewSuspected) as info,
        ):
            await client.refresh("rt-0", subject="did:key:zUser")
    error = info.value
    assert (error.reason, error.error, error.status_code) == (
        "clock_skew_suspected",
        "invalid_client",
        401,
    )
    assert not error.retryable
    assert error.offset == offset
    assert isinstance(error, ClientAuthenticationFailed)  # classified once, as such
    assert fake_as.count("/oidc/token") == 1
    assert len(messages(caplog, logging.ERROR)) == 1
    (refused,) = [r for r in caplog.records if r.name == "broker.oauth.as_errors"]
    assert refused.levelno == logging.ERROR
    assert "likely clock skew" in refused.getMessage()


@pytest.mark.parametrize("offset", [90, -90])
async def test_c09_compensation_puts_the_assertion_on_the_as_clock(
    fake_as: FakeAS, clock: FakeClock, config: ClientConfig, signer: SoftSigner, offset: int
) -> None:
    skewed = SkewedAS(fake_as, clock, offset)
    skew = monitor(clock, compensate=True)
    async with skewed.client() as http:
        client = OAuthClient(config, http, signer, clock, skew=skew)
        tokens = await client.refresh("rt-0", subject="did:key:zUser")
    # Discovery measured the offset before the first assertion was signed.
    assert skewed.assertion_iats == [int(clock.now()) + offset]
    assert tokens.received_at == clock.now()  # expiry stays on our own clock


async def test_c09_invalid_client_without_skew_stays_an_oauth_error(
    fake_as: FakeAS, clock: FakeClock, config: ClientConfig, signer: SoftSigner
) -> None:
    skewed = SkewedAS(fake_as, clock, 0)
    fake_as.token = lambda _r: httpx.Response(401, json={"error": "invalid_client"})
    async with skewed.client() as http:
        client = OAuthClient(config, http, signer, clock, skew=monitor(clock))
        with pytest.raises(OAuthErrorResponse) as info:
            await client.refresh("rt-0", subject="did:key:zUser")
    assert not isinstance(info.value, ClockSkewSuspected)
    assert info.value.error == "invalid_client"


async def test_c09_no_retry_storm_through_the_token_core(
    fake_as: FakeAS, clock: FakeClock, config: ClientConfig, signer: SoftSigner
) -> None:
    skewed = SkewedAS(fake_as, clock, -90)
    store = MemoryGrantStore(clock)
    async with skewed.client() as http:
        client = OAuthClient(config, http, signer, clock, skew=monitor(clock))
        broker = TokenBroker(store, client, clock, seams=Seams(rng=random.Random(1)))
        grant = await broker.add_grant(
            await _initial_tokens(clock),
            label="svc",
            issuer=config.issuer,
            client_id=config.client_id,
        )
        clock.advance(299)
        for _ in range(5):
            with pytest.raises(ClockSkewSuspected):
                await broker.get_access_token(grant.grant_id)
    assert fake_as.count("/oidc/token") == 1
    assert (await store.get(grant.grant_id)).refresh_token == "rt-initial"


async def _initial_tokens(clock: FakeClock) -> TokenSet:
    return TokenSet(
        access_token="at-initial",
        token_type="Bearer",
        expires_at=clock.now() + 300,
        received_at=clock.now(),
        scope="openid",
        refresh_token="rt-initial",
        id_claims={"sub": "did:key:zUser"},
    )


def test_c09_smoothed_offset_resists_a_single_outlier(clock: FakeClock) -> None:
    skew = monitor(clock)
    for _ in range(5):
        skew.observe(formatdate(clock.now() + 2, usegmt=True))
    skew.observe(formatdate(clock.now() + 40, usegmt=True))
    assert skew.offset == pytest.approx(2 + 0.3 * 38)  # one step of the weighted mean, not 40


def test_c09_back_within_bounds_rearms_the_warning(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    skew = SkewMonitor(clock, alarm_threshold=60.0, smoothing=1.0)
    with caplog.at_level(logging.INFO, logger="broker.oauth.skew"):
        for offset in (8, 9, 0, 8, 120, 121):
            skew.observe(formatdate(clock.now() + offset, usegmt=True))
    assert len(messages(caplog, logging.WARNING)) == 2
    assert len(messages(caplog, logging.ERROR)) == 1
    assert len(messages(caplog, logging.INFO)) == 1
    assert skew.suspected()


@pytest.mark.parametrize(
    "value", [None, "", "yesterday", "Tue, 32 Foo 2026 10:00:00 GMT", "Tue, 15 Nov 1994 08:12:31"]
)
def test_c09_missing_or_bad_date_is_ignored(clock: FakeClock, value: str | None) -> None:
    skew = monitor(clock)
    assert skew.observe(value) is None
    assert skew.offset is None and skew.samples == 0
    assert not skew.suspected()


def test_c09_http_date_formats() -> None:
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777.0


@pytest.mark.parametrize(
    "kwargs",
    [{"warn_threshold": 0.0}, {"alarm_threshold": -1.0}, {"smoothing": 0.0}, {"smoothing": 1.5}],
)
def test_c09_monitor_settings_are_validated(clock: FakeClock, kwargs: dict[str, float]) -> None:
    args: dict[str, Any] = {"alarm_threshold": 60.0, **kwargs}
    with pytest.raises(ConfigError):
        SkewMonitor(clock, **args)


async def test_c09_attach_registers_the_hook_once(clock: FakeClock) -> None:
    skew = monitor(clock)
    async with httpx.AsyncClient() as http:
        skew.attach(http)
        skew.attach(http)
        assert http.event_hooks["response"] == [skew.on_response]
