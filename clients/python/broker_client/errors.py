"""Typed errors built from the broker's gRPC status.

One tree rooted at :class:`BrokerClientError`; each error says whether retrying can help
(``retryable``), carries the status code, the server's message (the broker never puts secrets
in it) and, when the server gave one, its machine-readable ``reason``. The reason comes from a
``google.rpc.ErrorInfo`` in the ``grpc-status-details-bin`` trailer when the server sends one
and ``googleapis-common-protos`` is importable (it is not a dependency), else from the message
format the broker uses today: ``"<text>: <reason>"``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_REAUTHORIZATION_REASONS = frozenset({"invalid_grant", "reauthorization_required", "grant_revoked"})


class BrokerClientError(Exception):
    """Base of every error this package raises. ``retryable``: may a later retry succeed?"""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        code = self.code.name if self.code is not None else None
        return (
            f"{type(self).__name__}(code={code}, reason={self.reason!r}, message={self.message!r})"
        )


class Unavailable(BrokerClientError):
    """The broker, its HSM or the authorization server is briefly unreachable: retry later."""

    retryable = True


class DeadlineExceeded(BrokerClientError):
    """The call did not finish in time; the broker may still complete a refresh: retry."""

    retryable = True


class ResourceExhausted(BrokerClientError):
    """The broker is overloaded or a limit was hit: retry, but back off first."""

    retryable = True


class Aborted(BrokerClientError):
    """A concurrent update got in the way: retry."""

    retryable = True


class PermissionDenied(BrokerClientError):
    """The broker's policy does not allow this caller this method or grant."""


class Unauthenticated(BrokerClientError):
    """The broker did not accept the caller's client certificate."""


class NotFound(BrokerClientError):
    """Unknown grant or login."""


class InvalidArgument(BrokerClientError):
    """The request is malformed (grant id, label, min_ttl ...)."""


class AlreadyExists(BrokerClientError):
    """The thing to create exists already."""


class FailedPrecondition(BrokerClientError):
    """The grant or login cannot be used as it is: a user or an operator has to act."""


class ReauthorizationRequired(FailedPrecondition):
    """The grant's refresh token is dead: a user must log in again (StartAuthorization)."""


class Internal(BrokerClientError):
    """A bug on the broker side (the message is generic)."""


class Cancelled(BrokerClientError):
    """The call was cancelled (by this process or the server shutting down)."""

    retryable = True


class TokenExpired(BrokerClientError):
    """The broker answered with a token that expires within the caller's safety margin.

    Never served. Retrying may help (the broker renews tokens ahead of expiry); if it keeps
    happening, the clocks of caller and broker disagree.
    """

    retryable = True


class SourceClosed(BrokerClientError):
    """The token source was closed."""


_BY_CODE: dict[grpc.StatusCode, type[BrokerClientError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def error_class(code: grpc.StatusCode, reason: str | None) -> type[BrokerClientError]:
    """The exception class for a status code (and, for FAILED_PRECONDITION, its reason)."""
    if code is grpc.StatusCode.FAILED_PRECONDITION and reason in _REAUTHORIZATION_REASONS:
        return ReauthorizationRequired
    return _BY_CODE.get(code, BrokerClientError)


def reason_from_message(message: str) -> str | None:
    """The broker's ``"<text>: <reason>"`` format: the last segment, when it looks like a
    reason code (lower-case snake case), else ``None``."""
    head, sep, tail = message.rpartition(": ")
    if sep and head and _REASON.fullmatch(tail):
        return tail
    return None


def reason_from_details(trailing_metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The ``reason`` of the first ``google.rpc.ErrorInfo`` in ``grpc-status-details-bin``.

    ``None`` when there is no such trailer, it does not parse, or ``googleapis-common-protos``
    is not installed.
    """
    blob = next(
        (
            v
            for k, v in trailing_metadata or ()
            if k == _STATUS_DETAILS_KEY and isinstance(v, bytes)
        ),
        None,
    )
    if blob is None:
        return None
    try:  # googleapis-common-protos: optional, not a dependency
        status_pb2 = importlib.import_module("google.rpc.status_pb2")
        error_details_pb2 = importlib.import_module("google.rpc.error_details_pb2")
    except ImportError:
        return None
    try:
        status = status_pb2.Status.FromString(blob)
    except DecodeError:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.reason:
            return str(info.reason)
    return None


def from_rpc_error(exc: grpc.RpcError) -> BrokerClientError:
    """The typed error for a failed call (sync or ``grpc.aio``). Raise it ``from exc``."""
    code: grpc.StatusCode = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else None
    message = details if isinstance(details, str) else ""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    reason = reason_from_details(trailers) or reason_from_message(message)
    cls = error_class(code, reason)
    return cls(message or code.name.lower(), code=code, reason=reason)
