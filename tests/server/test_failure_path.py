"""One failure path for unary and streaming RPCs (broker.server.servicer): a denial is audited
with the caller and the method only (TEST-CATALOGUE E05), an unexpected error is logged once with
the method and becomes a generic INTERNAL, whether the RPC is GetAccessToken or WatchAccessToken."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.audit.events import AuditAction, AuditEvent
from broker.audit.trail import AuditTrail
from broker.server.gen.broker.v1 import broker_pb2 as pb
from tests.server.conftest import ADMIN, APP, LABELLER, Harness, started_harness
from tests.server.rpc import fails


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)


@pytest.fixture
async def audited(tmp_path: Path) -> AsyncIterator[tuple[Harness, RecordingSink]]:
    sink = RecordingSink()
    async with started_harness(tmp_path, audit=AuditTrail(sink)) as h:
        yield h, sink


async def test_e05_denied_watch_is_audited_like_a_denied_unary_call(
    audited: tuple[Harness, RecordingSink],
) -> None:
    h, sink = audited
    app, labeller = h.stub_for(APP), h.stub_for(LABELLER)
    calls: list[Callable[[], Any]] = [  # made one at a time: an RPC starts when it is made
        lambda: app.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-2")),  # grant
        lambda: app.WatchAccessToken(pb.WatchAccessTokenRequest(grant_id="g-2")).read(),
        lambda: labeller.WatchAccessToken(pb.WatchAccessTokenRequest(grant_id="g-1")).read(),
    ]
    for call in calls:
        err = await fails(call())
        assert (err.code(), err.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "permission denied",
        )
    assert [(e.action, e.caller, e.method, e.grant_id) for e in sink.events] == [
        (AuditAction.CALLER_DENIED, APP, "GetAccessToken", None),
        (AuditAction.CALLER_DENIED, APP, "WatchAccessToken", None),
        (AuditAction.CALLER_DENIED, LABELLER, "WatchAccessToken", None),
    ]
    assert h.broker.calls == []


async def test_unexpected_error_is_logged_once_per_call_unary_and_watch(
    audited: tuple[Harness, RecordingSink], caplog: pytest.LogCaptureFixture
) -> None:
    h, sink = audited
    h.broker.error = RuntimeError("bug")
    s = h.stub_for(ADMIN)
    caplog.set_level(logging.ERROR, logger="broker.server")
    calls: list[Callable[[], Any]] = [
        lambda: s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1")),
        lambda: s.WatchAccessToken(pb.WatchAccessTokenRequest(grant_id="g-1")).read(),
    ]
    for call in calls:
        err = await fails(call())
        assert (err.code(), err.details()) == (grpc.StatusCode.INTERNAL, "internal error")
    logged = [r for r in caplog.records if r.name == "broker.server"]
    assert [r.getMessage() for r in logged] == [
        "GetAccessToken failed: RuntimeError",
        "WatchAccessToken failed: RuntimeError",
    ]
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in logged)
    assert sink.events == []  # only denials are audited here
