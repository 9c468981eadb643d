"""G07 for interactive logins, with the real service: two ``broker serve`` replicas on one
PostgreSQL schema behind ONE public base URL (same redirect_uri, same request_uri base), as behind
a load balancer. The front is a switchable loopback TCP proxy (TLS passes through untouched: each
replica terminates TLS with the same certificate) that the test points at one replica or the
other (:meth:`FaultProxy.retarget`).

The login is started on replica A (gRPC StartAuthorization); the proxy is then pointed at B, so
the verifier (the real oidc-provider peer) fetches the request object from B and the browser's
callback lands on B. GetLogin on A reports the login COMPLETED and both replicas serve the grant:
the pending login lives in the shared grant store, not in A's memory. The second test kills A
(-9) between the start and the callback.

Where each request went: the proxy's connection log (every relayed connection and its upstream),
the peer's admin log (the request_uri it fetched, with the proxy's public address as its base, and
that the fetch succeeded) and the replicas' logs ("login completed" is written by the replica
that exchanged the code).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from broker.server.gen.broker.v1 import broker_pb2
from devtools.faultproxy import FaultProxy
from devtools.stack import DevStack, follow_login
from tests.parallel import unique_name
from tests.stacks import RPC_TIMEOUT, Stacks, get_token, start_with_retry
from tests.tokens.stores.helpers import drop_pg_schema, postgres_dsn_or_skip

COMPLETION_WAIT_S = 30.0  # generous: the machine is shared
NO_UPSTREAM_YET = 1  # the front relays to A's listener once A is up; nothing connects before


@dataclass
class Fronted:
    a: DevStack
    b: DevStack
    front: FaultProxy

    @property
    def public_base(self) -> str:
        return f"https://127.0.0.1:{self.front.port}"


@pytest.fixture
def fronted(stacks: Stacks) -> Iterator[Fronted]:
    dsn = postgres_dsn_or_skip()
    schema = unique_name("e2e")
    # The front listens first (port 0: the kernel's pick, held from then on), so the public port
    # the stacks are configured with cannot be taken by another process in between.
    front = FaultProxy("127.0.0.1", NO_UPSTREAM_YET)
    front.start()
    public_port = front.port
    try:
        a = stacks.up(
            "a",
            store_kind="postgres",
            store_dsn=dsn,
            store_schema=schema,
            public_port=public_port,
            background_interval=3600,
        )
        front.retarget(a.web_port)
        b = stacks.replica(a, "b")
        start_with_retry(b)
        assert b.web_port != a.web_port
        assert a.config is not None and b.config is not None
        assert (
            a.config.redirect_uri
            == b.config.redirect_uri
            == (f"https://127.0.0.1:{public_port}/callback")
        )
        yield Fronted(a, b, front)
    finally:
        stacks.close()
        front.stop()
        drop_pg_schema(dsn, schema)


def start_login(stack: DevStack, label: str) -> broker_pb2.StartAuthorizationResponse:
    with stack.channel() as channel:
        start: broker_pb2.StartAuthorizationResponse = stack.stub(channel).StartAuthorization(
            broker_pb2.StartAuthorizationRequest(label=label), timeout=RPC_TIMEOUT
        )
        return start


def wait_completed(stack: DevStack, login_id: str) -> broker_pb2.Login:
    deadline = time.monotonic() + COMPLETION_WAIT_S
    with stack.channel() as channel:
        stub = stack.stub(channel)
        while True:
            login: broker_pb2.Login = stub.GetLogin(
                broker_pb2.GetLoginRequest(login_id=login_id), timeout=RPC_TIMEOUT
            ).login
            if login.state != broker_pb2.LOGIN_STATE_PENDING or time.monotonic() > deadline:
                return login
            time.sleep(0.2)


def completed_logins(stack: DevStack) -> list[dict[str, object]]:
    """The "login completed" records of ``stack``'s JSON log."""
    found = []
    for line in stack.broker_log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") == "login completed":
            found.append(record)
    return found


def assert_served_by_b(f: Fronted, grant_id: str, *, relayed_before: int) -> None:
    """The request object fetch and the callback went to B (and only to B), and B exchanged
    the code."""
    b_upstream = ("127.0.0.1", f.b.web_port)
    relayed = f.front.upstreams()[relayed_before:]
    # At least the verifier's fetch of the request object and the browser's callback.
    assert len(relayed) >= 2, relayed
    assert set(relayed) == {b_upstream}, relayed
    fetched = [o for o in f.a.peer.admin_log()["request_objects"] if o["fetched"]]
    assert len(fetched) == 1, fetched
    assert fetched[0]["ok"] is True
    assert str(fetched[0]["request_uri"]).startswith(f"{f.public_base}/request-objects/")
    by_b = completed_logins(f.b)
    assert [r.get("grant_id") for r in by_b] == [grant_id]
    assert completed_logins(f.a) == []


@pytest.mark.peer
@pytest.mark.postgres
@pytest.mark.softhsm
@pytest.mark.slow
def test_g07_login_started_on_a_is_fetched_and_completed_on_b_behind_one_public_url(
    fronted: Fronted,
) -> None:
    f = fronted
    start = start_login(f.a, "across")
    relayed_before = len(f.front.upstreams())
    f.front.retarget(f.b.web_port)

    follow_login(start.authorization_url, f.a.ca_file)  # the verifier fetches from B, then B

    login = wait_completed(f.a, start.login_id)
    assert login.state == broker_pb2.LOGIN_STATE_COMPLETED, login.error
    grant_id = login.grant_id
    assert wait_completed(f.b, start.login_id).grant_id == grant_id
    assert_served_by_b(f, grant_id, relayed_before=relayed_before)
    from_a = get_token(f.a, grant_id).token
    from_b = get_token(f.b, grant_id).token
    assert from_a.access_token == from_b.access_token
    assert len([r for r in f.a.peer.token_requests() if r["status"] == 200]) == 1


@pytest.mark.peer
@pytest.mark.postgres
@pytest.mark.softhsm
@pytest.mark.slow
def test_g07_login_started_on_a_completes_on_b_after_a_is_killed(fronted: Fronted) -> None:
    f = fronted
    start = start_login(f.a, "a-killed")
    assert f.a.kill_broker() == -9
    relayed_before = len(f.front.upstreams())
    f.front.retarget(f.b.web_port)

    follow_login(start.authorization_url, f.a.ca_file)

    login = wait_completed(f.b, start.login_id)
    assert login.state == broker_pb2.LOGIN_STATE_COMPLETED, login.error
    grant_id = login.grant_id
    assert_served_by_b(f, grant_id, relayed_before=relayed_before)
    from_b = get_token(f.b, grant_id).token

    start_with_retry(f.a)  # A comes back: the login and the grant are in the store
    assert wait_completed(f.a, start.login_id).grant_id == grant_id
    assert get_token(f.a, grant_id).token.access_token == from_b.access_token
    assert len([r for r in f.a.peer.token_requests() if r["status"] == 200]) == 1
