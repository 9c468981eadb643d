"""A completed login is one INFO line naming the grant, its label and the caller (no secret)."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import pytest

from broker.login import LoginService
from tests.login.fakes import ISSUER

CALLER = "spiffe://corp.example/app"


async def test_login_completed_is_logged_at_info_without_secrets(
    service: LoginService, caplog: pytest.LogCaptureFixture
) -> None:
    view = await service.start(label="ops", owner=CALLER)
    assert view.authorization_url is not None
    state = parse_qs(urlsplit(view.authorization_url).query)["state"][0]
    with caplog.at_level(logging.INFO, logger="broker.login.service"):
        done = await service.complete(code="code-1", state=state, iss=ISSUER, owner=CALLER)
    (record,) = [r for r in caplog.records if r.getMessage() == "login completed"]
    assert record.levelno == logging.INFO
    assert (record.grant_id, record.label, record.caller) == (done.grant_id, "ops", CALLER)  # type: ignore[attr-defined]
    text = f"{record.getMessage()} {record.__dict__}"
    assert "code-1" not in text and state not in text
