"""The one classifier of authorization-server errors: a table over status x OAuth error x
endpoint, and what each class says about retrying."""

from __future__ import annotations

import logging
from email.utils import formatdate

import httpx
import pytest

from broker import errors as e
from broker.oauth import http as bounded
from broker.oauth.as_errors import Endpoint, classify, error_from_response, likely_cause
from broker.oauth.skew import SkewMonitor
from tests.clock import FakeClock

T, P = Endpoint.TOKEN, Endpoint.PAR
DID = "did:key:zDnaeClient"

# (status, endpoint, OAuth error or None, expected class, retryable)
TABLE: list[tuple[int, Endpoint, str | None, type[e.OAuthClientError], bool]] = [
    (429, T, None, e.AuthServerUnavailable, True),
    (500, T, None, e.AuthServerUnavailable, True),
    (503, P, None, e.AuthServerUnavailable, True),
    (502, T, "invalid_client", e.AuthServerUnavailable, True),  # 5xx wins: a proxy's page
    (400, T, "temporarily_unavailable", e.AuthServerUnavailable, True),
    (400, P, "server_error", e.AuthServerUnavailable, True),
    (401, T, "invalid_client", e.ClientAuthenticationFailed, False),
    (400, T, "invalid_client", e.ClientAuthenticationFailed, False),
    (401, P, "invalid_client", e.ClientAuthenticationFailed, False),
    (401, T, None, e.ClientAuthenticationFailed, False),  # bare 401
    (401, P, None, e.ClientAuthenticationFailed, False),
    (400, T, "invalid_grant", e.InvalidGrant, False),
    (401, T, "invalid_grant", e.InvalidGrant, False),  # the error code names the failure
    (400, P, "invalid_grant", e.InvalidGrant, False),
    (400, T, "invalid_request", e.OAuthErrorResponse, False),
    (400, P, "invalid_request_object", e.OAuthErrorResponse, False),
    (403, T, "unauthorized_client", e.OAuthErrorResponse, False),
    (400, T, None, e.InvalidGrant, False),  # DOME: dead code or refresh token
    (403, T, None, e.InvalidGrant, False),
    (400, P, None, e.UnexpectedResponse, True),  # no dead grant at PAR
    (403, P, None, e.UnexpectedResponse, True),
    (404, T, None, e.UnexpectedResponse, True),
    (302, T, None, e.UnexpectedResponse, True),
]


@pytest.mark.parametrize(
    ("status", "endpoint", "error", "expected", "retryable"),
    TABLE,
    ids=[f"{s}-{ep}-{err}" for s, ep, err, _, _ in TABLE],
)
def test_classification_table(
    status: int,
    endpoint: Endpoint,
    error: str | None,
    expected: type[e.OAuthClientError],
    retryable: bool,
) -> None:
    exc = classify(status, endpoint=endpoint, error=error)
    assert type(exc) is expected
    assert exc.retryable is retryable


def test_skew_suspected_turns_client_auth_failures_only_into_clock_skew() -> None:
    skewed = classify(401, endpoint=T, error="invalid_client", skew_offset=-90.0)
    assert type(skewed) is e.ClockSkewSuspected and not skewed.retryable
    assert isinstance(skewed, e.ClientAuthenticationFailed) and skewed.offset == -90.0
    bare = classify(401, endpoint=T, skew_offset=12.0)
    assert type(bare) is e.ClockSkewSuspected
    assert type(classify(400, endpoint=T, error="invalid_grant", skew_offset=-90.0)) is (
        e.InvalidGrant
    )
    assert type(classify(503, endpoint=T, skew_offset=-90.0)) is e.AuthServerUnavailable


def test_retry_after_is_kept_for_unavailable() -> None:
    exc = classify(429, endpoint=T, retry_after=7.0)
    assert isinstance(exc, e.AuthServerUnavailable) and exc.retry_after == 7.0


def _resp(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> bounded.HttpResponse:
    return bounded.HttpResponse(status, httpx.Headers(headers or {}), body, "verifier.example.org")


def test_error_from_response_reads_the_body_and_logs_client_auth_at_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resp = _resp(
        401,
        b'{"error":"invalid_client","error_description":"no key"}',
        {"content-type": "application/json"},
    )
    with caplog.at_level(logging.DEBUG, logger="broker.oauth.as_errors"):
        exc = error_from_response(resp, endpoint=T, now=0.0, client_id=DID)
    assert isinstance(exc, e.ClientAuthenticationFailed) and exc.description == "no key"
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert DID in record.getMessage() and "Trusted Services List" in record.getMessage()


def test_error_from_response_other_errors_are_not_logged_here(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="broker.oauth.as_errors"):
        exc = error_from_response(
            _resp(503, headers={"retry-after": "3"}), endpoint=T, now=0.0, client_id=DID
        )
        assert isinstance(exc, e.AuthServerUnavailable) and exc.retry_after == 3.0
        exc = error_from_response(_resp(403), endpoint=T, now=0.0, client_id=DID)
        assert isinstance(exc, e.InvalidGrant)
        exc = error_from_response(
            _resp(400, b"<html>", {"content-type": "text/html"}),
            endpoint=P,
            now=0.0,
            client_id=DID,
        )
        assert isinstance(exc, e.UnexpectedResponse)
    assert caplog.records == []


def test_error_from_response_uses_the_skew_monitor() -> None:
    clock = FakeClock(now=1_700_000_000.0)
    skew = SkewMonitor(clock, alarm_threshold=60.0)
    skew.observe(formatdate(clock.now() + 100, usegmt=True))  # the AS is 100 s ahead
    assert skew.suspected()
    exc = error_from_response(_resp(401), endpoint=T, now=clock.now(), client_id=DID, skew=skew)
    assert isinstance(exc, e.ClockSkewSuspected)
    assert "100.0 s behind" in likely_cause(exc, client_id=DID)


def test_a_200_carrying_an_oauth_error_is_read_as_a_400() -> None:
    resp = _resp(200, b'{"error":"invalid_grant"}', {"content-type": "application/json"})
    exc = error_from_response(resp, endpoint=T, now=0.0, client_id=DID, status=400)
    assert isinstance(exc, e.InvalidGrant) and exc.status_code == 400
