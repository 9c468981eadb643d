"""Issue 9 section 1 at service level: two login services ("replicas") on one real store (a
PostgreSQL schema of their own, or one SQLite file), each with its own store connection and its
own listener app. A login started on A is served and completed on B; a login survives A being
dropped (its process memory gone); two callbacks racing on A and B exchange one code. The OAuth
client is the in-process fake (what it is asked is recorded)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from broker.keys.soft import SoftKeyStore, SoftSealer, SoftSigner
from broker.login import LoginService, LoginSettings, LoginState, LoginView
from broker.tokens.stores.logins import GrantAndLoginStore
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from broker.web.app import create_app
from tests.clock import FakeClock
from tests.login.fakes import BASE_URL, ISSUER, REDIRECT_URI, FakeClient, FakeSink, client_config
from tests.tokens.stores.helpers import drop_pg_schema, pg_schema_name, postgres_dsn_or_skip


class Replica:
    def __init__(self, store: GrantAndLoginStore, env: Env) -> None:
        self.store = store
        self.client = FakeClient()
        self.logins = LoginService(
            self.client,
            client_config(env.signer.kid, use_par=False),
            env.signer,
            env.sink,
            env.clock,
            settings=LoginSettings(BASE_URL),
            store=store,
        )
        self.web = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(self.logins, redirect_uri=REDIRECT_URI)),
            base_url=BASE_URL,
        )


class Env:
    def __init__(self, open_store: Callable[[FakeClock], Awaitable[GrantAndLoginStore]]) -> None:
        keys = SoftKeyStore()
        keys.generate("client", b"\x01")
        self.signer: SoftSigner = keys.signer("client")
        self.clock = FakeClock()
        self.sink = FakeSink(clock=self.clock)  # the grants both replicas store
        self._open = open_store
        self._replicas: list[Replica] = []

    async def replica(self) -> Replica:
        replica = Replica(await self._open(self.clock), self)
        self._replicas.append(replica)
        return replica

    async def drop(self, replica: Replica) -> None:
        self._replicas.remove(replica)
        await replica.web.aclose()
        await replica.store.close()

    async def close(self) -> None:
        for replica in list(self._replicas):
            await self.drop(replica)


@pytest.fixture(params=["postgres", "sqlite"])
async def env(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Env]:
    sealer = SoftSealer()
    if request.param == "postgres":
        dsn = postgres_dsn_or_skip()
        schema = pg_schema_name()

        async def open_pg(clock: FakeClock) -> GrantAndLoginStore:
            return await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema)

        e = Env(open_pg)
        try:
            yield e
        finally:
            await e.close()
            drop_pg_schema(dsn, schema)
        return
    path = str(tmp_path / "grants.db")

    async def open_sqlite(clock: FakeClock) -> GrantAndLoginStore:
        return await SqliteGrantStore.connect(path, sealer, clock)

    e = Env(open_sqlite)
    try:
        yield e
    finally:
        await e.close()


def params_of(view: LoginView) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(view.authorization_url or "").query).items()}


def ref_path(view: LoginView) -> str:
    return urlsplit(params_of(view)["request_uri"]).path


async def test_a_login_started_on_a_is_served_and_completed_on_b(env: Env) -> None:
    a, b = await env.replica(), await env.replica()
    view = await a.logins.start(label="ops", owner="caller-1")
    fetched = await b.web.get(ref_path(view))  # the AS fetches the request_uri from B
    assert fetched.status_code == 200
    assert fetched.text == await a.logins.request_object(ref_path(view).rsplit("/", 1)[1])
    state = params_of(view)["state"]
    done = await b.web.get("/callback", params={"code": "c-1", "state": state, "iss": ISSUER})
    assert done.status_code == 200, done.text
    on_a = await a.logins.get(view.login_id, owner="caller-1")
    assert on_a.state is LoginState.COMPLETED and on_a.grant_id == "grant-1"
    assert [c.code for c in b.client.calls] == ["c-1"] and a.client.calls == []
    # The nonce and PKCE verifier B used are the ones A made (sealed in the store).
    call = b.client.calls[0]
    assert call.nonce == params_of(view)["nonce"] and call.code_verifier is not None
    assert (await b.web.get(ref_path(view))).status_code == 404  # never served again


async def test_a_login_survives_its_replica_going_away(env: Env) -> None:
    a = await env.replica()
    view = await a.logins.start(label="ops", owner="caller-1")
    await env.drop(a)  # A's process memory is gone
    b = await env.replica()
    assert (await b.web.get(ref_path(view))).status_code == 200
    state = params_of(view)["state"]
    done = await b.web.get("/callback", params={"code": "c-1", "state": state, "iss": ISSUER})
    assert done.status_code == 200, done.text
    a2 = await env.replica()  # A restarted
    assert (await a2.logins.get(view.login_id, owner="caller-1")).state is LoginState.COMPLETED


async def test_c03_two_callbacks_racing_on_two_replicas_exchange_one_code(env: Env) -> None:
    a, b = await env.replica(), await env.replica()
    view = await a.logins.start(label="ops")
    state = params_of(view)["state"]
    params = {"code": "c-1", "state": state, "iss": ISSUER}
    results = await asyncio.gather(
        a.web.get("/callback", params=params), b.web.get("/callback", params=params)
    )
    assert sorted(r.status_code for r in results) == [200, 400]
    assert len(a.client.calls) + len(b.client.calls) == 1
    assert len(env.sink.grants) == 1


async def test_a_transient_failure_on_b_restarts_the_login_that_a_started(env: Env) -> None:
    from broker.errors import AuthServerUnavailable

    a, b = await env.replica(), await env.replica()
    view = await a.logins.start(label="ops")
    b.client.exchange_error = AuthServerUnavailable("down", status_code=500)
    first = await b.web.get(
        "/callback", params={"code": "c-1", "state": params_of(view)["state"], "iss": ISSUER}
    )
    assert first.status_code == 303
    again = await a.logins.get(view.login_id)
    assert (
        again.state is LoginState.PENDING and first.headers["location"] == again.authorization_url
    )
    assert (await a.web.get(ref_path(again))).status_code == 200  # the new request, on A
    b.client.exchange_error = None
    done = await a.web.get(
        "/callback", params={"code": "c-2", "state": params_of(again)["state"], "iss": ISSUER}
    )
    assert done.status_code == 200, done.text
    assert (await b.logins.get(view.login_id)).state is LoginState.COMPLETED
