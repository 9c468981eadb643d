"""Every error status carries a google.rpc.ErrorInfo (grpc-status-details-bin, grpcio-status):
unit level over every class of broker/errors.py, and end to end through the real server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from broker import errors as e
from broker.server.errors import (
    ERROR_DOMAIN,
    STATUS_DETAILS_KEY,
    status_code_for,
    to_rich_status,
    to_status,
    wire_reason,
)
from broker.server.gen.broker.v1 import broker_pb2 as pb
from tests.server.conftest import ADMIN, APP, Harness, started_harness
from tests.server.rpc import fails
from tests.server.test_errors import ALL, EXPECTED, instantiate

S = grpc.StatusCode


def error_info(trailers: Any) -> tuple[Any, Any]:
    """The google.rpc.Status of the trailers and its one ErrorInfo."""
    blobs = [v for k, v in trailers if k == STATUS_DETAILS_KEY]
    assert len(blobs) == 1
    status = status_pb2.Status.FromString(blobs[0])
    assert len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return status, info


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_f09_every_error_class_sends_error_info_without_secrets(
    cls: type[e.BrokerError],
) -> None:
    exc = instantiate(cls)
    code, message, trailers = to_rich_status(exc, ids={"grantId": "g-1"})
    assert (code, message) == to_status(exc)
    assert code is EXPECTED[cls.__name__]
    status, info = error_info(trailers)
    assert status.code == code.value[0]
    assert status.message == message
    assert info.domain == ERROR_DOMAIN
    assert info.reason == wire_reason(cls)
    if code in (S.PERMISSION_DENIED, S.INTERNAL):
        assert dict(info.metadata) == {}
    else:
        assert info.metadata["grantId"] == "g-1"
        assert info.metadata["retryable"] == ("true" if cls.retryable else "false")
    if code is S.INTERNAL:
        assert info.reason == "internal"
    # nothing of the (path-bearing) exception text: only caller errors echo their own message
    if code not in (S.INVALID_ARGUMENT, S.NOT_FOUND):
        assert b"/etc/broker" not in b"".join(v for _, v in trailers)
    assert "/etc/broker" not in str(info)


def test_reason_is_the_class_reason_and_an_instance_reason_is_the_detail() -> None:
    exc = e.AuthorizationResponseError("iss is not the issuer", reason="iss_mismatch")
    code, _, trailers = to_rich_status(exc)
    _, info = error_info(trailers)
    assert code is S.INVALID_ARGUMENT
    assert info.reason == "authorization_response"
    assert info.metadata["detail"] == "iss_mismatch"


class ElsewhereBusy(e.HsmUnavailable):
    """An error class defined outside broker/errors.py (as some modules do)."""

    reason = "elsewhere_busy"


def test_a_class_outside_the_tree_module_sends_its_base_reason() -> None:
    assert wire_reason(ElsewhereBusy) == "hsm_unavailable"
    code, _, trailers = to_rich_status(ElsewhereBusy("x"))
    _, info = error_info(trailers)
    assert (code, info.reason, info.metadata["detail"]) == (
        S.UNAVAILABLE,
        "hsm_unavailable",
        "elsewhere_busy",
    )


def test_non_broker_errors_send_generic_reasons() -> None:
    _, info = error_info(to_rich_status(RuntimeError("secret detail"))[2])
    assert (info.reason, dict(info.metadata)) == ("internal", {})
    code, _, trailers = to_rich_status(TimeoutError())
    assert code is S.DEADLINE_EXCEEDED
    assert error_info(trailers)[1].reason == "deadline_exceeded"
    assert status_code_for(TimeoutError) is S.DEADLINE_EXCEEDED


async def _rich(err: grpc.aio.AioRpcError) -> tuple[Any, Any]:
    """Through grpcio-status, which also checks code and message match the status."""
    status = rpc_status.to_status(
        status_pb2.Status.FromString(
            next(v for k, v in err.trailing_metadata() if k == STATUS_DETAILS_KEY)
        )
    )
    assert status.code is err.code()
    assert status.details == err.details()
    return error_info(err.trailing_metadata())


@pytest.mark.parametrize(
    ("error", "code", "reason", "detail"),
    [
        (e.ReauthorizationRequired("log in again"), S.FAILED_PRECONDITION, "reauthorization_required", None),
        (e.InvalidGrant(status_code=400), S.FAILED_PRECONDITION, "invalid_grant", None),
        (e.HsmUnavailable("hsm gone"), S.UNAVAILABLE, "hsm_unavailable", None),
        (e.DiscoveryError("bad", reason="http_status"), S.UNAVAILABLE, "discovery", "http_status"),
        (e.StoreError("db down"), S.UNAVAILABLE, "store", None),
    ],
)  # fmt: skip
async def test_the_server_sends_error_info_with_the_grant_id(
    harness: Harness, error: BaseException, code: grpc.StatusCode, reason: str, detail: str | None
) -> None:
    harness.broker.error = error
    err = await fails(harness.stub_for(ADMIN).GetGrant(pb.GetGrantRequest(grant_id="g-1")))
    assert err.code() is code
    _, info = await _rich(err)
    assert (info.domain, info.reason) == (ERROR_DOMAIN, reason)
    assert info.metadata["grantId"] == "g-1"
    assert info.metadata["retryable"] == ("true" if getattr(error, "retryable", False) else "false")
    assert info.metadata.get("detail") == detail


async def test_the_server_sends_error_info_on_a_watch_stream(harness: Harness) -> None:
    harness.broker.error = e.GrantRevoked("revoked")
    call = harness.stub_for(ADMIN).WatchAccessToken(pb.WatchAccessTokenRequest(grant_id="g-1"))
    err = await fails(call.read())
    _, info = await _rich(err)
    assert info.reason == "grant_revoked"
    assert info.metadata["grantId"] == "g-1"


async def test_not_found_and_invalid_argument_echo_only_well_formed_ids(harness: Harness) -> None:
    s = harness.stub_for(ADMIN)
    err = await fails(s.GetGrant(pb.GetGrantRequest(grant_id="g-missing")))
    _, info = await _rich(err)
    assert (err.code(), info.reason) == (S.NOT_FOUND, "grant_not_found")
    assert info.metadata["grantId"] == "g-missing"
    err = await fails(s.GetGrant(pb.GetGrantRequest(grant_id="not a grant id!")))
    _, info = await _rich(err)
    assert (err.code(), info.reason) == (S.INVALID_ARGUMENT, "invalid_argument")
    assert "grantId" not in info.metadata
    err = await fails(s.GetLogin(pb.GetLoginRequest(login_id="login-unknown")))
    _, info = await _rich(err)
    assert (err.code(), info.reason) == (S.NOT_FOUND, "login_not_found")
    assert info.metadata["loginId"] == "login-unknown"


async def test_permission_denied_and_internal_carry_no_metadata(harness: Harness) -> None:
    err = await fails(harness.stub_for(APP).GetGrant(pb.GetGrantRequest(grant_id="g-2")))
    _, info = await _rich(err)
    assert (err.code(), info.reason, dict(info.metadata)) == (
        S.PERMISSION_DENIED,
        "permission_denied",
        {},
    )
    harness.broker.error = RuntimeError("bug with secret-ish detail")
    err = await fails(harness.stub_for(ADMIN).GetGrant(pb.GetGrantRequest(grant_id="g-1")))
    _, info = await _rich(err)
    assert (err.code(), err.details(), info.reason, dict(info.metadata)) == (
        S.INTERNAL,
        "internal error",
        "internal",
        {},
    )


async def test_overload_rejection_sends_error_info(tmp_path: Path) -> None:
    async with started_harness(tmp_path, max_concurrent_rpcs=1) as h:
        h.broker.gate = asyncio.Event()
        s = h.stub_for(ADMIN)
        first = s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
        await asyncio.wait_for(h.broker.entered.wait(), 20)
        err = await fails(s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")))
        assert err.code() is S.RESOURCE_EXHAUSTED
        _, info = await _rich(err)
        assert (info.reason, dict(info.metadata)) == ("overloaded", {"retryable": "true"})
        h.broker.gate.set()
        assert (await first).token.grant_id == "g-1"
