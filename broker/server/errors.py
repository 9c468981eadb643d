"""The one mapping from broker errors to gRPC status codes (DESIGN.md, "Errors to gRPC status").

Status messages never hold secrets, file paths or inventory: caller errors carry their own
(validated, secret-free) message, permission errors a fixed text, server-side trouble only the
stable machine-readable ``reason``.
"""

from __future__ import annotations

import grpc

from broker import errors as e

_PERMISSION_DENIED_MESSAGE = "permission denied"
_INTERNAL_MESSAGE = "internal error"


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
        if isinstance(exc, e.EndpointOriginRefused):
            return code, f"broker refuses the authorization server's metadata: {exc.reason}"
        return code, f"grant or login not usable: {exc.reason}"
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return code, f"already exists: {exc.reason}"
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return code, f"too many requests, retry later: {exc.reason}"
    if code is grpc.StatusCode.ABORTED:
        return code, f"concurrent update, retry: {exc.reason}"
    return code, f"temporarily unavailable: {exc.reason}"


def _code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if not isinstance(exc, e.BrokerError):
        return grpc.StatusCode.INTERNAL
    if isinstance(exc, e.PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, e.InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, e.NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(
        exc,
        e.InvalidGrant
        | e.ReauthorizationRequired
        | e.LoginExpired
        | e.AuthorizationDenied
        | e.ConfirmationMismatch
        | e.ClientAuthenticationFailed
        | e.EndpointOriginRefused
        | e.DeploymentMismatch,
    ):
        # The grant or login cannot be used as it is: a user has to act (log in again), or an
        # operator (the AS refuses our client authentication, or a clock skewed far enough for
        # that, or AS metadata naming endpoints on a foreign origin). Retrying cannot help.
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, e.LoginCapacityExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, e.AuditError):
        # No token leaves unaudited: fail closed, the caller retries later (H01).
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, e.AuthorizationResponseError):
        # The authorization response handed to CompleteAuthorization does not check out
        # (unknown state, wrong iss, error=...): the caller's input, not a server fault.
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, e.GrantExists | e.KeyExists):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, e.VersionConflict):
        return grpc.StatusCode.ABORTED
    if isinstance(exc, e.OAuthClientError):
        # AS trouble the caller cannot fix (bad response, failed id_token, other OAuth error):
        # UNAVAILABLE, never INTERNAL (TEST-CATALOGUE A04).
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, e.KeyStoreError):
        # Wrong PIN, locked PIN, wrong key: the broker is not ready to sign (D05, D11).
        return grpc.StatusCode.UNAVAILABLE
    if exc.retryable:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL
