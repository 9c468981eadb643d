"""The one error -> status mapping: a table over every class in broker/errors.py."""

from __future__ import annotations

import inspect
from typing import Any

import grpc
import pytest

from broker import errors as e
from broker.server.errors import to_status

S = grpc.StatusCode

EXPECTED: dict[str, Any] = {
    "BrokerError": S.INTERNAL,
    "InvalidArgument": S.INVALID_ARGUMENT,
    "PermissionDenied": S.PERMISSION_DENIED,
    "NotFound": S.NOT_FOUND,
    "ConfigError": S.INTERNAL,
    "KeyStoreError": S.UNAVAILABLE,
    "KeyNotFound": S.NOT_FOUND,
    "KeyExists": S.ALREADY_EXISTS,
    "TokenNotPresent": S.UNAVAILABLE,
    "PinIncorrect": S.UNAVAILABLE,
    "PinLocked": S.UNAVAILABLE,
    "HsmUnavailable": S.UNAVAILABLE,
    "HsmBusy": S.UNAVAILABLE,
    "InvalidKey": S.UNAVAILABLE,
    "InvalidKeyUri": S.INVALID_ARGUMENT,
    "DidError": S.INVALID_ARGUMENT,
    "OAuthClientError": S.UNAVAILABLE,
    "DiscoveryError": S.UNAVAILABLE,
    "EndpointOriginRefused": S.FAILED_PRECONDITION,
    "AuthServerUnavailable": S.UNAVAILABLE,
    "OAuthErrorResponse": S.FAILED_PRECONDITION,
    "InvalidGrant": S.FAILED_PRECONDITION,
    "ClockSkewSuspected": S.FAILED_PRECONDITION,
    "UnexpectedResponse": S.UNAVAILABLE,
    "TokenValidationError": S.UNAVAILABLE,
    "AuthorizationResponseError": S.INVALID_ARGUMENT,
    "LoginExpired": S.FAILED_PRECONDITION,
    "GrantNotFound": S.NOT_FOUND,
    "LoginNotFound": S.NOT_FOUND,
    "ReauthorizationRequired": S.FAILED_PRECONDITION,
    "StoreError": S.UNAVAILABLE,
    "GrantExists": S.ALREADY_EXISTS,
    "VersionConflict": S.ABORTED,
    "AuditError": S.UNAVAILABLE,
    "AuditUnavailable": S.UNAVAILABLE,
    "ConfirmationMismatch": S.FAILED_PRECONDITION,
    "SelfTestFailed": S.UNAVAILABLE,
    "AuthorizationDenied": S.FAILED_PRECONDITION,
    "LoginCapacityExceeded": S.RESOURCE_EXHAUSTED,
    "GrantRevoked": S.FAILED_PRECONDITION,
    "MalformedIdentity": S.PERMISSION_DENIED,
    "InsecurePinFile": S.UNAVAILABLE,
    "OrphanKey": S.UNAVAILABLE,
    "ClientAuthenticationFailed": S.FAILED_PRECONDITION,
    "DeploymentMismatch": S.FAILED_PRECONDITION,
    "StoreUnusable": S.INTERNAL,
    "CredentialError": S.FAILED_PRECONDITION,
    "MachineGrantRejected": S.FAILED_PRECONDITION,
}


def instantiate(cls: type[e.BrokerError]) -> e.BrokerError:
    if cls.__name__ == "AuthorizationDenied":
        return cls("access_denied")
    if issubclass(cls, e.OAuthErrorResponse):
        return cls("invalid_grant" if cls is e.InvalidGrant else "invalid_client", status_code=400)
    return cls("something about the-secret-path /etc/broker/pin")


ALL = sorted(
    (
        cls
        for _, cls in inspect.getmembers(e, inspect.isclass)
        if issubclass(cls, e.BrokerError) and cls.__module__ == e.__name__
    ),
    key=lambda c: c.__name__,
)


def test_every_error_class_has_an_expected_status() -> None:
    missing = [c.__name__ for c in ALL if c.__name__ not in EXPECTED]
    assert missing == [], f"add {missing} to broker/server/errors.py and this table"


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_error_maps_to_expected_status(cls: type[e.BrokerError]) -> None:
    exc = instantiate(cls)
    code, message = to_status(exc)
    assert code is EXPECTED[cls.__name__]
    assert message
    if code not in (S.INVALID_ARGUMENT, S.NOT_FOUND):
        # server-side detail (paths, AS answers) never reaches the caller
        assert "/etc/broker" not in message


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (ValueError("secret detail"), S.INTERNAL, "internal error"),
        (KeyError("x"), S.INTERNAL, "internal error"),
        (TimeoutError(), S.DEADLINE_EXCEEDED, "deadline exceeded"),
        (e.PermissionDenied("grant g-2 of label crm"), S.PERMISSION_DENIED, "permission denied"),
        (e.StoreError("db at /var/lib/x down"), S.UNAVAILABLE, "temporarily unavailable: store"),
    ],
)
def test_non_broker_errors_and_messages(exc: BaseException, code: Any, message: str) -> None:
    assert to_status(exc) == (code, message)


def test_retryable_flag_decides_for_an_unclassified_error() -> None:
    class Flaky(e.BrokerError):
        retryable = True

    assert to_status(Flaky("x"))[0] is S.UNAVAILABLE
    assert to_status(e.BrokerError("x")) == (S.INTERNAL, "internal error")


@pytest.mark.parametrize(
    "exc",
    [
        e.ClientAuthenticationFailed("invalid_client", status_code=401),
        e.ClockSkewSuspected(status_code=401, offset=-90.0),
    ],
    ids=["invalid_client", "clock_skew"],
)
def test_client_authentication_failure_says_what_is_wrong_without_internals(
    exc: e.ClientAuthenticationFailed,
) -> None:
    code, message = to_status(exc)
    assert code is S.FAILED_PRECONDITION
    assert message == (f"broker cannot authenticate to the authorization server: {exc.reason}")
    assert "401" not in message and "did:" not in message


def test_refused_endpoint_origin_is_a_failed_precondition_without_the_origin() -> None:
    exc = e.EndpointOriginRefused("metadata token_endpoint is on https://evil.example")
    code, message = to_status(exc)
    assert code is S.FAILED_PRECONDITION
    assert message == "broker refuses the authorization server's metadata: endpoint_origin_refused"
