"""Typed errors from the broker's gRPC status, over the real server (and, for the status details
trailer the server may add later, a real gRPC server that sends one)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from broker_client import (
    AsyncBrokerClient,
    BrokerClient,
    BrokerClientError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReauthorizationRequired,
    ResourceExhausted,
    Unavailable,
    secure_channel,
)
from broker_client.errors import error_class, reason_from_message
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from broker import errors as broker_errors
from tests.client.conftest import LiveBroker
from tests.server.conftest import ADMIN, APP


def client_for(live: LiveBroker, identity: str) -> Iterator[BrokerClient]:
    files = live.files(identity)
    with secure_channel(
        live.target, ca=files.ca, cert=files.cert, key=files.key, server_name="broker.test"
    ) as channel:
        yield BrokerClient(channel, timeout=10)


@pytest.fixture
def app(live: LiveBroker) -> Iterator[BrokerClient]:
    yield from client_for(live, APP)


@pytest.fixture
def admin(live: LiveBroker) -> Iterator[BrokerClient]:
    yield from client_for(live, ADMIN)


def test_permission_denied(app: BrokerClient) -> None:
    with pytest.raises(PermissionDenied) as info:
        app.get_access_token("g-2")  # not in the APP identity's grants
    assert info.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert not info.value.retryable


def test_not_found(admin: BrokerClient) -> None:
    with pytest.raises(NotFound) as info:
        admin.get_access_token("g-missing")
    assert info.value.code is grpc.StatusCode.NOT_FOUND
    assert not info.value.retryable


def test_invalid_argument(admin: BrokerClient) -> None:
    with pytest.raises(InvalidArgument):
        admin.get_access_token("not a grant id!")


@pytest.mark.parametrize(
    ("error", "expected", "reason"),
    [
        (
            broker_errors.ReauthorizationRequired("dead"),
            ReauthorizationRequired,
            "reauthorization_required",
        ),
        (broker_errors.InvalidGrant(status_code=400), ReauthorizationRequired, "invalid_grant"),
        (broker_errors.GrantRevoked("revoked"), ReauthorizationRequired, "grant_revoked"),
        (broker_errors.LoginExpired("late"), FailedPrecondition, "login_expired"),
    ],
)
def test_failed_precondition_with_the_servers_reason(
    live: LiveBroker,
    admin: BrokerClient,
    error: Exception,
    expected: type[BrokerClientError],
    reason: str,
) -> None:
    live.set_error(error)
    with pytest.raises(expected) as info:
        admin.get_access_token("g-1")
    assert type(info.value) is expected
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.reason == reason
    assert not info.value.retryable


def test_unavailable_is_retryable_and_carries_the_reason(
    live: LiveBroker, admin: BrokerClient
) -> None:
    live.set_error(broker_errors.HsmUnavailable("gone"))
    with pytest.raises(Unavailable) as info:
        admin.get_access_token("g-1")
    assert info.value.retryable
    assert info.value.reason == "hsm_unavailable"
    # the channel's retry policy retried UNAVAILABLE before giving up
    assert len(live.calls("get_access_token")) > 1


def test_resource_exhausted_is_retryable_and_not_retried_by_the_channel(
    live: LiveBroker, admin: BrokerClient
) -> None:
    live.set_error(broker_errors.LoginCapacityExceeded("full"))
    with pytest.raises(ResourceExhausted) as info:
        admin.get_access_token("g-1")
    assert info.value.retryable
    assert info.value.reason == "too_many_logins"
    assert len(live.calls("get_access_token")) == 1


def test_the_real_server_sends_error_info_and_the_client_reads_it(
    live: LiveBroker, admin: BrokerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reason comes from the server's ErrorInfo (the error's class reason), not from the
    message, whose last segment is the more specific instance reason."""
    live.set_error(broker_errors.DiscoveryError("discovery answered 503", reason="http_status"))
    with pytest.raises(Unavailable) as info:
        admin.get_access_token("g-1")
    assert info.value.message == "temporarily unavailable: http_status"
    assert info.value.reason == "discovery"
    assert info.value.retryable
    monkeypatch.setitem(sys.modules, "google.rpc.status_pb2", None)  # no googleapis protos
    with pytest.raises(Unavailable) as info:
        admin.get_access_token("g-1")
    assert info.value.reason == "http_status"


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_every_status_code_has_a_class_saying_whether_to_retry(code: grpc.StatusCode) -> None:
    cls = error_class(code, None)
    assert issubclass(cls, BrokerClientError)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        assert cls.retryable
    if code in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INTERNAL,
    ):
        assert not cls.retryable


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("grant or login not usable: invalid_grant", "invalid_grant"),
        ("temporarily unavailable: as_unavailable", "as_unavailable"),
        ("permission denied", None),
        ("grant not found", None),
        ("something: Not A Reason", None),
        (": invalid_grant", None),
    ],
)
def test_reason_from_the_message_format(message: str, reason: str | None) -> None:
    assert reason_from_message(message) == reason


# --- google.rpc.Status details (grpc-status-details-bin) --------------------------------------


def status_details(reason: str) -> bytes:
    info = error_details_pb2.ErrorInfo(reason=reason, domain="broker.example")
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=9, message="x", details=[detail])
    blob: bytes = status.SerializeToString()
    return blob


@pytest.fixture
async def details_server() -> AsyncIterator[str]:
    """A real grpc.aio server answering GetAccessToken with FAILED_PRECONDITION, a message
    whose suffix is not the reason, and an ErrorInfo carrying it."""

    async def get_access_token(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            "grant or login not usable: from_message",
            trailing_metadata=(("grpc-status-details-bin", status_details("invalid_grant")),),
        )
        raise AssertionError("unreachable")

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "broker.v1.TokenBroker",
                {"GetAccessToken": grpc.unary_unary_rpc_method_handler(get_access_token)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_reason_from_error_info_details(details_server: str) -> None:
    async with grpc.aio.insecure_channel(details_server) as channel:
        with pytest.raises(ReauthorizationRequired) as info:
            await AsyncBrokerClient(channel).get_access_token("g-1")
    assert info.value.reason == "invalid_grant"


async def test_reason_from_the_message_without_googleapis_protos(
    details_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "google.rpc.status_pb2", None)  # import now fails
    async with grpc.aio.insecure_channel(details_server) as channel:
        with pytest.raises(FailedPrecondition) as info:
            await AsyncBrokerClient(channel).get_access_token("g-1")
    assert type(info.value) is FailedPrecondition
    assert info.value.reason == "from_message"
