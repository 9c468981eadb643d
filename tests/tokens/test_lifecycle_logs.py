"""Grant refreshed / grant revoked are INFO lines with grant id and label, never a token."""

from __future__ import annotations

import logging
import random

import pytest

from broker.tokens.broker import TokenBroker
from broker.tokens.settings import Seams
from tests.clock import FakeClock
from tests.tokens.fakes import FakeGrantStore, FakeRefresher, token_set

LIFETIME = 3600.0


def lifecycle(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [
        (r.getMessage(), r.grant_id, r.label)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "broker.tokens.broker"
        and r.levelno == logging.INFO
        and r.getMessage() in ("grant refreshed", "grant revoked")
    ]


async def test_refresh_and_revoke_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    refresher = FakeRefresher(clock, lifetime=LIFETIME)
    broker = TokenBroker(FakeGrantStore(clock), refresher, clock, seams=Seams(rng=random.Random(7)))
    grant = await broker.add_grant(
        token_set(clock, lifetime=LIFETIME),
        label="crm",
        issuer="https://as.example",
        client_id="did:key:zClient",
    )
    with caplog.at_level(logging.INFO, logger="broker.tokens.broker"):
        clock.advance(LIFETIME - 1)
        token = await broker.get_access_token(grant.grant_id)
        await broker.revoke_grant(grant.grant_id)
    assert refresher.calls == 1
    assert lifecycle(caplog) == [
        ("grant refreshed", grant.grant_id, "crm"),
        ("grant revoked", grant.grant_id, "crm"),
    ]
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert token.access_token not in logged
