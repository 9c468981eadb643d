"""Whole local systems (:class:`devtools.stack.DevStack`) as real processes, shared by the e2e and
chaos suites.

The ``stacks`` fixture (registered for every test by ``tests/conftest.py``) skips a test without
node + npm and hands it a :class:`Stacks`: ``stacks.up(name, **options)`` brings a stack up in a
fresh directory (``DevStack.up``) and registers it; every stack and replica a test started is
taken down by the fixture's finalizer, even when the test fails, so no ``node peer.mjs`` or
``broker serve`` outlives a test. ``login(stack)`` drives StartAuthorization -> the verifier's
auto-login -> GetLogin like ``make demo`` and returns the grant id. ``get_token``, ``grant_of``,
``call_get_token`` (for a thread, reports the status code instead of raising) and
``start_with_retry`` are the other helpers the tests share.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.server.gen.broker.v1 import broker_pb2
from devtools.peer import PeerUnavailable, ensure_node_modules
from devtools.stack import DevStack, StackError, follow_login

RPC_TIMEOUT = 20.0  # every RPC of these tests is bounded


class Stacks:
    """Started stacks and replicas of one test; ``close()`` stops them all (replicas first)."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._stacks: list[DevStack] = []

    def up(self, name: str = "stack", **options: Any) -> DevStack:
        stack = DevStack.up(self._base / name, **options)
        self._stacks.append(stack)
        return stack

    def replica(self, stack: DevStack, name: str) -> DevStack:
        replica = stack.replica(name)
        self._stacks.append(replica)
        return replica

    def close(self) -> None:
        errors: list[BaseException] = []
        for stack in reversed(self._stacks):
            try:
                stack.down()
            except BaseException as exc:
                errors.append(exc)
        self._stacks.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[Stacks]:
    try:
        ensure_node_modules()
    except PeerUnavailable as exc:
        pytest.skip(f"a whole local stack needs node + npm: {exc}")
    registry = Stacks(tmp_path)
    try:
        yield registry
    finally:
        registry.close()


def login(stack: DevStack, *, label: str = "e2e") -> str:
    """A completed interactive login through ``stack``'s broker; returns the grant id."""
    with stack.channel() as channel:
        stub = stack.stub(channel)
        start = stub.StartAuthorization(
            broker_pb2.StartAuthorizationRequest(label=label), timeout=RPC_TIMEOUT
        )
        follow_login(start.authorization_url, stack.ca_file)
        for _ in range(100):
            got = stub.GetLogin(
                broker_pb2.GetLoginRequest(login_id=start.login_id), timeout=RPC_TIMEOUT
            ).login
            if got.grant_id:
                return str(got.grant_id)
            time.sleep(0.1)
    raise StackError(f"login did not complete:\n{stack.broker_log()[-3000:]}")


def get_token(
    stack: DevStack, grant_id: str, *, metadata: list[tuple[str, str]] | None = None
) -> broker_pb2.GetAccessTokenResponse:
    with stack.channel() as channel:
        resp: broker_pb2.GetAccessTokenResponse = stack.stub(channel).GetAccessToken(
            broker_pb2.GetAccessTokenRequest(grant_id=grant_id),
            metadata=metadata,
            timeout=RPC_TIMEOUT,
        )
        return resp


def start_with_retry(stack: DevStack, attempts: int = 3) -> None:
    """Start ``broker serve``; a concurrent PKCS#11 login to one file token can fail with
    GeneralError (a fact of SoftHSM), so a start that fails is retried a bounded number of times."""
    for attempt in range(1, attempts + 1):
        try:
            stack.start_broker()
            return
        except StackError:
            stack.stop_broker()
            if attempt == attempts:
                raise


def grant_of(stack: DevStack, grant_id: str) -> broker_pb2.Grant:
    with stack.channel() as channel:
        resp = stack.stub(channel).GetGrant(
            broker_pb2.GetGrantRequest(grant_id=grant_id), timeout=RPC_TIMEOUT
        )
        grant: broker_pb2.Grant = resp.grant
        return grant


def call_get_token(
    stack: DevStack, grant_id: str, out: list[object], sent: threading.Event | None = None
) -> None:
    """GetAccessToken on a connected channel; ``sent`` is set just before the call goes out
    (the TLS handshake is not part of the refresh window)."""
    try:
        with stack.channel() as channel:
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
            stub = stack.stub(channel)
            stub.GetGrant(broker_pb2.GetGrantRequest(grant_id=grant_id), timeout=RPC_TIMEOUT)
            if sent is not None:
                sent.set()
            resp = stub.GetAccessToken(
                broker_pb2.GetAccessTokenRequest(grant_id=grant_id), timeout=RPC_TIMEOUT
            )
            out.append(resp.token.access_token)
    except grpc.RpcError as exc:
        out.append(exc.code())
    finally:
        if sent is not None:
            sent.set()
