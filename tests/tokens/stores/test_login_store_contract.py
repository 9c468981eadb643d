"""Login-store contract (issue 9): pending logins in the memory, SQLite and PostgreSQL stores.

Every SQL test opens a *second* store on the same file or schema (a second replica) where the
contract is about sharing: what one replica writes, the other finds; of two claims racing on two
replicas, exactly one wins. PostgreSQL: its own schema per test, dropped at the end."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from broker.errors import KeyStoreError, StoreError
from broker.keys.soft import SoftSealer
from broker.tokens.stores.logins import (
    LoginRecord,
    LoginSecrets,
    LoginStatus,
    LoginStore,
    MemoryLoginStore,
)
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SCHEMA_VERSION, SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import drop_pg_schema, pg_schema_name, postgres_dsn_or_skip

NOW = 1_800_000_000.0
NONCE = "nonce-secret-Zq81"
VERIFIER = "verifier-secret-Xk02-" + "v" * 30
REQUEST_OBJECT = "eyJhbGciOiJFUzI1NiJ9.request-object-secret.sig"
AUTH_URL = "https://as.example/auth?state=state-secret-Qw77&nonce=nonce-secret-Zq81"
SECRET_TEXTS = (NONCE, VERIFIER, "request-object-secret", "state-secret-Qw77")


def key(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def make_login(login_id: str = "L-1", **overrides: Any) -> LoginRecord:
    values: dict[str, Any] = {
        "login_id": login_id,
        "label": "ops",
        "owner": "spiffe://corp/caller",
        "status": LoginStatus.PENDING,
        "state_key": key(f"state-{login_id}"),
        "ref_key": key(f"ref-{login_id}"),
        "secrets": LoginSecrets(
            nonce=NONCE,
            code_verifier=VERIFIER,
            request_object=REQUEST_OBJECT,
            authorization_url=AUTH_URL,
        ),
        "expires_at": NOW + 600,
        "created_at": NOW,
    }
    values.update(overrides)
    return LoginRecord(**values)


Opener = Callable[[], Awaitable[LoginStore]]


@dataclasses.dataclass
class Replicas:
    """Two stores on the same data (two replicas); ``raw`` reads a row's stored columns."""

    kind: str
    a: LoginStore
    open_b: Opener
    raw: Callable[[str], Awaitable[dict[str, Any]]]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def replicas(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Replicas]:
    clock = FakeClock(NOW)
    sealer = SoftSealer()
    closers: list[Callable[[], Awaitable[None]]] = []
    if request.param == "memory":
        memory = MemoryLoginStore()

        async def same() -> LoginStore:
            return memory

        async def raw_memory(login_id: str) -> dict[str, Any]:
            record = await memory.login_by_id(login_id)
            return dataclasses.asdict(record) if record else {}

        yield Replicas("memory", memory, same, raw_memory)
        return
    if request.param == "sqlite":
        path = str(tmp_path / "grants.db")

        async def open_sqlite() -> LoginStore:
            store = await SqliteGrantStore.connect(path, sealer, clock)
            closers.append(store.close)
            return store

        async def raw_sqlite(login_id: str) -> dict[str, Any]:
            with sqlite3.connect(path) as conn:
                conn.row_factory = sqlite3.Row
                row = conn.execute(
                    "SELECT * FROM pending_logins WHERE login_id = ?", (login_id,)
                ).fetchone()
            return dict(row) if row else {}

        first = await open_sqlite()
        try:
            yield Replicas("sqlite", first, open_sqlite, raw_sqlite)
        finally:
            for close in closers:
                await close()
        return
    dsn = postgres_dsn_or_skip()
    schema = pg_schema_name()

    async def open_pg() -> LoginStore:
        store = await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema)
        closers.append(store.close)
        return store

    async def raw_pg(login_id: str) -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute(
                sql.SQL("SELECT * FROM {}.pending_logins WHERE login_id = %s").format(
                    sql.Identifier(schema)
                ),
                (login_id,),
            )
            row = await cur.fetchone()
            names = [d.name for d in cur.description or ()]
        return dict(zip(names, row, strict=True)) if row else {}

    first = await open_pg()
    try:
        yield Replicas("postgres", first, open_pg, raw_pg)
    finally:
        for close in closers:
            await close()
        drop_pg_schema(dsn, schema)


async def test_a_login_added_on_one_replica_is_found_on_the_other_by_id_state_and_ref(
    replicas: Replicas,
) -> None:
    login = make_login()
    await replicas.a.add_login(login)
    b = await replicas.open_b()
    assert await b.login_by_id("L-1") == login
    assert await b.login_by_state(key("state-L-1")) == login
    assert await b.login_by_ref(key("ref-L-1")) == login
    assert await b.login_by_state(key("state-other")) is None
    assert await b.login_by_ref(key("ref-other")) is None
    assert await b.login_by_id("L-2") is None
    with pytest.raises(StoreError):
        await b.add_login(make_login())


async def test_two_claims_racing_on_two_replicas_have_exactly_one_winner(
    replicas: Replicas,
) -> None:
    await replicas.a.add_login(make_login())
    b = await replicas.open_b()
    for _ in range(3):  # the race is repeated: one winner every time
        results = await asyncio.gather(
            replicas.a.claim_login("L-1", key("state-L-1"), NOW),
            b.claim_login("L-1", key("state-L-1"), NOW),
            b.claim_login("L-1", key("state-L-1"), NOW),
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert winners[0].status is LoginStatus.EXCHANGING
        assert winners[0].secrets == make_login().secrets
        # A claimed login is found by id, not by its (consumed) state nor its request_uri.
        assert await b.login_by_state(key("state-L-1")) is None
        assert await b.login_by_ref(key("ref-L-1")) is None
        assert await replicas.a.restart_login(make_login(restarts=1))


async def test_claim_needs_the_state_a_pending_status_and_an_unexpired_login(
    replicas: Replicas,
) -> None:
    await replicas.a.add_login(make_login())
    store = replicas.a
    assert await store.claim_login("L-1", key("state-wrong"), NOW) is None
    assert await store.claim_login("L-1", key("state-L-1"), NOW + 600) is None  # expired
    assert await store.claim_login("nope", key("state-L-1"), NOW) is None
    assert (await store.login_by_id("L-1")) == make_login()  # unchanged by the refusals


async def test_restart_replaces_keys_and_secrets_and_the_old_ones_stop_working(
    replicas: Replicas,
) -> None:
    await replicas.a.add_login(make_login())
    new = make_login(
        state_key=key("state-new"),
        ref_key=key("ref-new"),
        secrets=LoginSecrets(
            nonce="n2", code_verifier=None, request_object="ro2", authorization_url="u2"
        ),
        expires_at=NOW + 900,
        restarts=1,
    )
    assert not await replicas.a.restart_login(new)  # only an exchanging login restarts
    assert await replicas.a.claim_login("L-1", key("state-L-1"), NOW) is not None
    b = await replicas.open_b()
    assert await b.restart_login(new)
    assert not await replicas.a.restart_login(new)
    got = await replicas.a.login_by_id("L-1")
    assert got == new
    assert await replicas.a.login_by_state(key("state-L-1")) is None
    assert await replicas.a.login_by_ref(key("ref-L-1")) is None
    assert await replicas.a.login_by_ref(key("ref-new")) == new
    assert await replicas.a.claim_login("L-1", key("state-new"), NOW + 700) is not None


async def test_finish_is_a_compare_and_set_and_drops_every_secret(replicas: Replicas) -> None:
    await replicas.a.add_login(make_login())
    await replicas.a.claim_login("L-1", key("state-L-1"), NOW)
    b = await replicas.open_b()
    done_at = NOW + 5
    assert not await b.finish_login(
        "L-1", LoginStatus.COMPLETED, now=done_at, grant_id="g-1", expected=LoginStatus.PENDING
    )
    assert await b.finish_login(
        "L-1", LoginStatus.COMPLETED, now=done_at, grant_id="g-1", expected=LoginStatus.EXCHANGING
    )
    assert not await replicas.a.finish_login(
        "L-1", LoginStatus.FAILED, now=done_at, error="x", expected=LoginStatus.EXCHANGING
    )
    done = await replicas.a.login_by_id("L-1")
    assert done is not None
    assert (done.status, done.grant_id, done.finished_at) == (LoginStatus.COMPLETED, "g-1", NOW + 5)
    assert done.secrets is None and done.state_key is None and done.ref_key is None
    raw = await replicas.raw("L-1")
    assert raw["secrets"] is None
    with pytest.raises(StoreError):
        await b.finish_login("L-1", LoginStatus.PENDING, now=NOW, expected=LoginStatus.COMPLETED)


async def test_an_expired_login_keeps_its_state_key_so_a_late_callback_is_told_expired(
    replicas: Replicas,
) -> None:
    await replicas.a.add_login(make_login())
    assert await replicas.a.finish_login(
        "L-1",
        LoginStatus.EXPIRED,
        now=NOW + 600,
        error="login_expired",
        expected=LoginStatus.PENDING,
    )
    late = await replicas.a.login_by_state(key("state-L-1"))
    assert late is not None and late.status is LoginStatus.EXPIRED and late.secrets is None
    assert await replicas.a.login_by_ref(key("ref-L-1")) is None


async def test_prune_expires_fails_stuck_exchanges_and_deletes_old_finished_logins(
    replicas: Replicas,
) -> None:
    store = replicas.a
    await store.add_login(make_login("L-old", expires_at=NOW + 10))
    await store.add_login(make_login("L-stuck", expires_at=NOW + 10))
    await store.add_login(make_login("L-live", expires_at=NOW + 1000))
    assert await store.claim_login("L-stuck", key("state-L-stuck"), NOW) is not None
    assert await store.count_pending_logins(NOW) == 2
    assert await store.count_pending_logins(NOW + 10) == 1
    # Past expiry: the pending one expires; the exchange is not yet overdue.
    assert await store.prune_logins(NOW + 20, retention=100, exchange_timeout=50) == 1
    old = await store.login_by_id("L-old")
    assert old is not None and old.status is LoginStatus.EXPIRED and old.secrets is None
    assert (await store.login_by_id("L-stuck")).status is LoginStatus.EXCHANGING  # type: ignore[union-attr]
    # The replica that claimed it never finished: failed after the exchange timeout.
    assert await store.prune_logins(NOW + 60, retention=100, exchange_timeout=50) == 1
    stuck = await store.login_by_id("L-stuck")
    assert stuck is not None and (stuck.status, stuck.error) == (
        LoginStatus.FAILED,
        "exchange_interrupted",
    )
    assert stuck.secrets is None
    # Retention over: both finished logins are deleted, the live one stays.
    await store.prune_logins(NOW + 200, retention=100, exchange_timeout=50)
    assert await store.login_by_id("L-old") is None
    assert await store.login_by_id("L-stuck") is None
    assert await store.login_by_id("L-live") is not None


async def test_a_login_survives_a_restart_of_the_replica_that_started_it(
    replicas: Replicas,
) -> None:
    if replicas.kind == "memory":
        pytest.skip("the memory store is one process by definition")
    await replicas.a.add_login(make_login())
    await replicas.a.close()  # type: ignore[attr-defined]
    again = await replicas.open_b()
    assert await again.login_by_state(key("state-L-1")) == make_login()


async def test_secrets_are_sealed_at_rest_and_bound_to_the_login_id(replicas: Replicas) -> None:
    if replicas.kind == "memory":
        pytest.skip("the memory store keeps nothing at rest")
    await replicas.a.add_login(make_login("L-1"))
    await replicas.a.add_login(make_login("L-2"))
    raw = await replicas.raw("L-1")
    stored = b"".join(bytes(v) for v in raw.values() if isinstance(v, bytes | memoryview))
    text = " ".join(str(v) for v in raw.values() if isinstance(v, str))
    for secret in SECRET_TEXTS:
        assert secret.encode() not in stored and secret not in text
    assert bytes(raw["state_key"]) == key("state-L-1")  # a digest, never the state itself
    # A sealed blob copied to another login does not open there.
    other = await replicas.raw("L-2")
    assert bytes(other["secrets"]) != bytes(raw["secrets"])
    from broker.tokens.stores.logins import open_secrets

    sealer = replicas.a._sealer  # type: ignore[attr-defined]
    assert open_secrets(sealer, "L-1", bytes(raw["secrets"])) == make_login().secrets
    with pytest.raises(KeyStoreError):
        open_secrets(sealer, "L-2", bytes(raw["secrets"]))
    assert repr(await replicas.a.login_by_id("L-1")).count(NONCE) == 0


def test_the_login_table_is_its_own_migration_step() -> None:
    from broker.tokens.stores import postgres, sqlite

    assert SCHEMA_VERSION == postgres.SCHEMA_VERSION >= 4
    assert "pending_logins" in dict(sqlite.MIGRATIONS)[4][0]
    assert "pending_logins" in dict(postgres.MIGRATIONS)[4][0]
