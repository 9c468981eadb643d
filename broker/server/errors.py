"""The one mapping from broker errors to gRPC status (DESIGN.md, "Errors to gRPC status").

Status messages never hold secrets, file paths or inventory: caller errors carry their own
(validated, secret-free) message, permission errors a fixed text, server-side trouble only the
stable machine-readable ``reason``.

Every error status also carries a ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer (AIP-193, through grpcio-status) with one ``google.rpc.ErrorInfo``: ``domain``
:data:`ERROR_DOMAIN`, ``reason`` the stable reason of the error's class in ``broker/errors.py``
(:func:`wire_reason`; the proto's service comment lists them all) and ``metadata``: ``retryable``
and, when known and not secret, ``grantId`` / ``loginId`` (the caller's own, validated ids) and
``detail`` (a more specific machine-readable reason). PERMISSION_DENIED and INTERNAL carry no
metadata.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from broker import errors as e

_PERMISSION_DENIED_MESSAGE = "permission denied"
_INTERNAL_MESSAGE = "internal error"

ERROR_DOMAIN = "dome-token-broker"
"""``google.rpc.ErrorInfo.domain`` of every error the broker sends."""
REASON_INTERNAL = "internal"
REASON_DEADLINE_EXCEEDED = "deadline_exceeded"
REASON_OVERLOADED = "overloaded"
"""Sent with RESOURCE_EXHAUSTED by the server's admission limit (not a broker error class)."""
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_DETAIL = re.compile(r"[a-z][a-z0-9_]{0,63}")
_NO_METADATA = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL)

Trailers = tuple[tuple[str, bytes], ...]


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map an exception to the gRPC status code and message the caller sees.

    The order matters: specific classes first (``InvalidGrant`` is an ``OAuthErrorResponse``,
    ``KeyNotFound`` a ``KeyStoreError``), the ``retryable`` flag last.
    """
    code = _code(exc)
    if code is grpc.StatusCode.INTERNAL:
        return code, _INTERNAL_MESSAGE
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return code, _PERMISSION_DENIED_MESSAGE
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return code, "deadline exceeded"
    assert isinstance(exc, e.BrokerError)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return code, exc.message
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        if isinstance(exc, e.ClientAuthenticationFailed):
            return code, f"broker cannot authenticate to the authorization server: {exc.reason}"
        if isinstance(exc, e.CredentialError):
            return code, f"broker's machine credential not usable: {exc.reason}"
        if isinstance(exc, e.EndpointOriginRefused):
            return code, f"broker refuses the authorization server's metadata: {exc.reason}"
        if type(exc) is e.OAuthErrorResponse:
            return code, f"the authorization server refused the request: error={exc.error}"
        return code, f"grant or login not usable: {exc.reason}"
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return code, f"already exists: {exc.reason}"
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return code, f"too many requests, retry later: {exc.reason}"
    if code is grpc.StatusCode.ABORTED:
        return code, f"concurrent update, retry: {exc.reason}"
    return code, f"temporarily unavailable: {exc.reason}"


def _code(exc: BaseException) -> grpc.StatusCode:
    return status_code_for(type(exc))


def status_code_for(cls: type[BaseException]) -> grpc.StatusCode:
    """The status code of an exception class (the one table; ``retryable`` is a class field)."""
    if issubclass(cls, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if not issubclass(cls, e.BrokerError):
        return grpc.StatusCode.INTERNAL
    if issubclass(cls, e.PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED
    if issubclass(cls, e.InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT
    if issubclass(cls, e.NotFound):
        return grpc.StatusCode.NOT_FOUND
    if issubclass(
        cls,
        e.InvalidGrant
        | e.ReauthorizationRequired
        | e.LoginExpired
        | e.AuthorizationDenied
        | e.ConfirmationMismatch
        | e.OAuthErrorResponse
        | e.EndpointOriginRefused
        | e.DeploymentMismatch
        | e.CredentialError,
    ):
        # The grant or login cannot be used as it is: a user has to act (log in again), or an
        # operator (the AS refuses our client authentication, or a clock skewed far enough for
        # that, another OAuth error such as invalid_scope or unauthorized_client, or AS metadata
        # naming endpoints on a foreign origin). Retrying cannot help.
        return grpc.StatusCode.FAILED_PRECONDITION
    if issubclass(cls, e.LoginCapacityExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if issubclass(cls, e.AuditError):
        # No token leaves unaudited: fail closed, the caller retries later (H01).
        return grpc.StatusCode.UNAVAILABLE
    if issubclass(cls, e.AuthorizationResponseError):
        # The authorization response handed to CompleteAuthorization does not check out
        # (unknown state, wrong iss, error=...): the caller's input, not a server fault.
        return grpc.StatusCode.INVALID_ARGUMENT
    if issubclass(cls, e.GrantExists | e.KeyExists):
        return grpc.StatusCode.ALREADY_EXISTS
    if issubclass(cls, e.VersionConflict):
        return grpc.StatusCode.ABORTED
    if issubclass(cls, e.OAuthClientError):
        # AS trouble the caller cannot fix (bad response, failed id_token, other OAuth error):
        # UNAVAILABLE, never INTERNAL (TEST-CATALOGUE A04).
        return grpc.StatusCode.UNAVAILABLE
    if issubclass(cls, e.KeyStoreError):
        # Wrong PIN, locked PIN, wrong key: the broker is not ready to sign (D05, D11).
        return grpc.StatusCode.UNAVAILABLE
    if cls.retryable:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def wire_reason(cls: type[BaseException]) -> str:
    """The ``ErrorInfo.reason`` sent for an exception class.

    The ``reason`` of the most derived class of ``broker/errors.py`` the class is, so the set of
    reasons is the closed list the proto documents; INTERNAL errors all send ``internal``.
    """
    code = status_code_for(cls)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return REASON_DEADLINE_EXCEEDED
    if code is grpc.StatusCode.INTERNAL:
        return REASON_INTERNAL
    for klass in cls.__mro__:
        if klass.__module__ == e.__name__ and issubclass(klass, e.BrokerError):
            return klass.reason
    return REASON_INTERNAL  # pragma: no cover (every BrokerError derives from e.BrokerError)


def status_trailers(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: Mapping[str, str] | None = None,
) -> Trailers:
    """The ``grpc-status-details-bin`` trailer: a ``google.rpc.Status`` of ``code`` and
    ``message`` holding one ``google.rpc.ErrorInfo``."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=_rpc_code(code), message=message, details=[detail])
    converted = rpc_status.to_status(status)
    return tuple((str(k), bytes(v)) for k, v in converted.trailing_metadata)


def to_rich_status(
    exc: BaseException, *, ids: Mapping[str, str] | None = None
) -> tuple[grpc.StatusCode, str, Trailers]:
    """:func:`to_status` plus the ErrorInfo trailer. ``ids``: the request's validated, non-secret
    ids (``grantId``, ``loginId``), sent back as metadata unless the code is PERMISSION_DENIED or
    INTERNAL."""
    code, message = to_status(exc)
    reason = wire_reason(type(exc))
    metadata: dict[str, str] = {}
    if code not in _NO_METADATA:
        metadata["retryable"] = "true" if getattr(exc, "retryable", True) else "false"
        metadata.update(ids or {})
        detail = getattr(exc, "reason", None)
        if isinstance(detail, str) and detail != reason and _DETAIL.fullmatch(detail):
            metadata["detail"] = detail
    return code, message, status_trailers(code, message, reason, metadata)


def _rpc_code(code: grpc.StatusCode) -> int:
    value: int = code.value[0]
    assert code_pb2.Code.Name(value) == code.name  # the two enums agree
    return value
