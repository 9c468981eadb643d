"""Helpers shared by the store tests (tests/tokens/stores/) and the tests of other packages that
open a grant store: grants and token sets to store, the PostgreSQL test database and its
per-test schemas, a polling wait, a counting sealer, an older open transaction and the
``opener`` fixture that opens one store (memory, SQLite, PostgreSQL) again and again.

PostgreSQL: each store gets its own schema (``test_store_<uuid>``) in the local database
``test``, dropped afterwards. Without a reachable server the postgres cases are skipped with a
loud reason, unless ``BROKER_REQUIRE_POSTGRES=1`` (then they fail).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from broker.keys.soft import SoftSealer
from broker.oauth.types import TokenSet
from broker.tokens.model import Grant, GrantStatus
from broker.tokens.stores.deployment import DeploymentIdentity
from broker.tokens.stores.memory import MemoryGrantStore
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock

PG_DSN = os.environ.get("BROKER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
HANG_GUARD_S = 30.0  # only to turn a deadlock into a failure; never asserted on


def postgres_dsn_or_skip() -> str:
    """The test DSN, or skip loudly (fail when BROKER_REQUIRE_POSTGRES=1)."""
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = (
            f"PostgreSQL NOT REACHABLE at 127.0.0.1:5432/test ({type(exc).__name__}): "
            "the PostgreSQL grant store is NOT TESTED. Set BROKER_REQUIRE_POSTGRES=1 to fail."
        )
        if os.environ.get("BROKER_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return PG_DSN


def pg_schema_name() -> str:
    return f"test_store_{uuid.uuid4().hex[:12]}"


def drop_pg_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until ``predicate`` holds; a generous guard turns a hang into a clear failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG_GUARD_S
    while not await predicate():
        if loop.time() > deadline:
            pytest.fail(f"gave up waiting for: {what}")
        await asyncio.sleep(0.01)


def make_grant(grant_id: str = "g-1", **overrides: Any) -> Grant:
    values: dict[str, Any] = {
        "grant_id": grant_id,
        "label": "billing",
        "issuer": "https://verifier.example",
        "client_id": "did:key:zDnaeClient",
        "subject": "user-7",
        "scope": "openid learcredential",
        "status": GrantStatus.ACTIVE,
        "access_token": f"AT-{grant_id}-v1-plaintext",
        "access_expires_at": 1_800_000_300.0,
        "refresh_token": f"RT-{grant_id}-v1-plaintext",
        "created_at": 1_800_000_000.0,
        "updated_at": 1_800_000_000.0,
        "id_claims": {"sub": "user-7", "email": "alice.pii@example.org"},
    }
    values.update(overrides)
    return Grant(**values)


def make_tokens(tag: str, *, refresh: str | None = None, **overrides: Any) -> TokenSet:
    values: dict[str, Any] = {
        "access_token": f"AT-{tag}",
        "token_type": "Bearer",
        "expires_at": 1_800_003_600.0,
        "received_at": 1_800_000_000.0,
        "scope": "openid learcredential",
        "refresh_token": refresh,
    }
    values.update(overrides)
    return TokenSet(**values)


class CountingSealer(SoftSealer):
    """A SoftSealer that counts its calls and, with ``db``, checks on every call whether some
    connection holds the SQLite write lock on that file (an HSM call under the lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.opens = 0
        self.seals = 0
        self.db: str | None = None
        self.under_lock: list[str] = []

    def _check_lock(self, what: str) -> None:
        if self.db is None:
            return
        probe = sqlite3.connect(self.db, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError:
            self.under_lock.append(what)
        finally:
            probe.close()

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        self.seals += 1
        self._check_lock("seal")
        return super().seal(plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        self.opens += 1
        self._check_lock("open")
        return super().open(sealed, aad)


@asynccontextmanager
async def older_transaction_open(dsn: str) -> AsyncIterator[None]:
    """Another connection's transaction, holding a transaction id, open until the block ends,
    as another test run or application on the same server may hold one."""
    async with await psycopg.AsyncConnection.connect(dsn) as other:
        await other.execute("SELECT pg_current_xact_id()")
        try:
            yield
        finally:
            await other.rollback()


OURS = DeploymentIdentity(
    issuer="https://verifier.example", client_id="did:key:zDnaeClient", did="did:key:zDnaeClient"
)


Opener = Callable[..., Awaitable[Any]]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """``await opener(identity=..., record_identity=...)`` opens the same store again."""
    clock = FakeClock()
    sealer = SoftSealer()
    opened: list[Any] = []
    kind = request.param
    schema = ""
    dsn = ""
    if kind == "postgres":
        dsn = postgres_dsn_or_skip()
        schema = pg_schema_name()

    async def open_store(**kwargs: Any) -> Any:
        store: Any
        if kind == "memory":
            first = opened[0] if opened else None
            store = MemoryGrantStore(clock, shared_with=first, **kwargs)
        elif kind == "sqlite":
            store = await SqliteGrantStore.connect(
                str(tmp_path / "grants.db"), sealer, clock, **kwargs
            )
        else:
            store = await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema, **kwargs)
        opened.append(store)
        return store

    try:
        yield open_store
    finally:
        for store in opened:
            await store.close()
        if kind == "postgres":
            drop_pg_schema(dsn, schema)
