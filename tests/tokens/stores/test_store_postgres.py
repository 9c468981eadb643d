"""PostgreSQL grant store: cross-replica refresh lock (G07), sealing at rest (G09), migrations,
races between replicas, errors. Every test uses its own schema, dropped at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from broker.errors import ConfigError, KeyStoreError, StoreError, VersionConflict
from broker.keys.soft import SoftSealer
from broker.tokens.stores.postgres import SCHEMA_VERSION, PostgresGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import (
    HANG_GUARD_S,
    drop_pg_schema,
    make_grant,
    make_tokens,
    pg_schema_name,
    postgres_dsn_or_skip,
    wait_until,
)

pytestmark = pytest.mark.postgres

SECRETS = (
    "AT-g-1-v1-plaintext",
    "RT-g-1-v1-plaintext",
    "AT-rotated-secret",
    "RT-rotated-secret",
    "alice.pii@example.org",
)

# A second broker process ("replica") that takes the refresh lock and then waits to be killed.
_HOLDER = """
import asyncio, sys
from broker.clock import SystemClock
from broker.keys.soft import SoftSealer
from broker.tokens.stores.postgres import PostgresGrantStore

async def main() -> None:
    dsn, schema, grant_id = sys.argv[1], sys.argv[2], sys.argv[3]
    store = await PostgresGrantStore.connect(dsn, SoftSealer(), SystemClock(), schema=schema)
    async with store.refresh_lock(grant_id):
        print("locked", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


@pytest.fixture
def dsn() -> str:
    return postgres_dsn_or_skip()


@pytest.fixture
def schema(dsn: str) -> Any:
    name = pg_schema_name()
    yield name
    drop_pg_schema(dsn, name)


@pytest.fixture
def sealer() -> SoftSealer:
    return SoftSealer()


@pytest.fixture
async def replicas(
    dsn: str, schema: str, sealer: SoftSealer
) -> AsyncIterator[tuple[PostgresGrantStore, PostgresGrantStore]]:
    a = await PostgresGrantStore.connect(dsn, sealer, FakeClock(), schema=schema)
    b = await PostgresGrantStore.connect(dsn, sealer, FakeClock(), schema=schema)
    yield a, b
    await a.close()
    await b.close()


async def _advisory_waiters(dsn: str, schema: str, grant_id: str) -> int:
    """Sessions waiting (not granted) for this grant's advisory lock."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn:
        cur = await conn.execute(
            """
            SELECT count(*) FROM pg_locks
            WHERE locktype = 'advisory' AND NOT granted AND objsubid = 2
              AND classid::bigint = (hashtext(%s)::bigint + 4294967296) %% 4294967296
              AND objid::bigint = (hashtext(%s)::bigint + 4294967296) %% 4294967296
            """,
            (f"broker.grant:{schema}", grant_id),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def _waiting(dsn: str, schema: str, grant_id: str, n: int = 1) -> Callable[[], Any]:
    async def check() -> bool:
        return await _advisory_waiters(dsn, schema, grant_id) >= n

    return check


async def _take(store: PostgresGrantStore, grant_id: str, log: list[str], name: str) -> None:
    async with store.refresh_lock(grant_id):
        log.append(name)


async def test_g07_refresh_lock_excludes_a_second_replica(
    replicas: tuple[PostgresGrantStore, PostgresGrantStore], dsn: str, schema: str
) -> None:
    a, b = replicas
    await a.create(make_grant())
    log: list[str] = []
    async with a.refresh_lock("g-1"):
        second = asyncio.create_task(_take(b, "g-1", log, "replica-b"))
        await wait_until(_waiting(dsn, schema, "g-1"), "replica B waits in pg_advisory_lock")
        assert log == []
        log.append("replica-a-released")
    await asyncio.wait_for(second, HANG_GUARD_S)
    assert log == ["replica-a-released", "replica-b"]
    assert await _advisory_waiters(dsn, schema, "g-1") == 0


async def test_g07_other_grants_are_not_blocked_across_replicas(
    replicas: tuple[PostgresGrantStore, PostgresGrantStore],
) -> None:
    a, b = replicas
    async with a.refresh_lock("g-1"), asyncio.timeout(HANG_GUARD_S), b.refresh_lock("g-2"):
        pass


async def test_g07_crashed_holder_process_frees_the_lock(
    replicas: tuple[PostgresGrantStore, PostgresGrantStore], dsn: str, schema: str
) -> None:
    _, b = replicas
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLDER,
        dsn,
        schema,
        "g-1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), HANG_GUARD_S)
        assert line == b"locked\n"
        log: list[str] = []
        waiter = asyncio.create_task(_take(b, "g-1", log, "replica-b"))
        await wait_until(_waiting(dsn, schema, "g-1"), "replica B waits for the crashed holder")
        assert log == []
        os.kill(holder.pid, signal.SIGKILL)
        assert await holder.wait() == -signal.SIGKILL
        await asyncio.wait_for(waiter, HANG_GUARD_S)
        assert log == ["replica-b"]
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_cancelled_waiter_leaves_no_lock_request_behind(
    replicas: tuple[PostgresGrantStore, PostgresGrantStore], dsn: str, schema: str
) -> None:
    a, b = replicas
    async with a.refresh_lock("g-1"):
        waiter = asyncio.create_task(_take(b, "g-1", [], "never"))
        await wait_until(_waiting(dsn, schema, "g-1"), "replica B waits")
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        assert waiter.cancelled()

        async def gone() -> bool:
            return await _advisory_waiters(dsn, schema, "g-1") == 0

        await wait_until(gone, "the cancelled waiter's session released its request")
    async with asyncio.timeout(HANG_GUARD_S), b.refresh_lock("g-1"):
        pass


async def test_g07_concurrent_rotations_from_two_replicas_one_wins(
    replicas: tuple[PostgresGrantStore, PostgresGrantStore],
) -> None:
    a, b = replicas
    await a.create(make_grant())
    for version in range(1, 21):
        results = await asyncio.gather(
            a.rotate(
                "g-1",
                make_tokens(f"a{version}", refresh=f"RT-a{version}"),
                expected_version=version,
            ),
            b.rotate(
                "g-1",
                make_tokens(f"b{version}", refresh=f"RT-b{version}"),
                expected_version=version,
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1, results
        assert len(losers) == 1 and isinstance(losers[0], VersionConflict), results
        stored = await b.get("g-1")
        assert stored == winners[0]
        assert stored.version == version + 1
        assert stored.refresh_token == f"RT-{stored.access_token[3:]}"


async def test_g09_raw_rows_hold_no_token_plaintext(
    replicas: tuple[PostgresGrantStore, PostgresGrantStore], dsn: str, schema: str
) -> None:
    a, _ = replicas
    await a.create(make_grant())
    await a.rotate(
        "g-1", make_tokens("rotated-secret", refresh="RT-rotated-secret"), expected_version=1
    )
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn:
        cur = await conn.execute(
            sql.SQL("SELECT t::text FROM {}.grants t").format(sql.Identifier(schema))
        )
        text_rows = [r[0] for r in await cur.fetchall()]
        cur = await conn.execute(
            sql.SQL("SELECT access_token, refresh_token, id_claims FROM {}.grants").format(
                sql.Identifier(schema)
            )
        )
        blobs = [bytes(v) for r in await cur.fetchall() for v in r]
    assert len(text_rows) == 1
    dump = text_rows[0].encode() + b"".join(blobs)
    assert b"billing" in dump and b"user-7" in dump  # clear columns are visible to the scan
    for secret in SECRETS:
        assert secret.encode() not in dump, secret


async def test_wrong_sealer_key_raises_keystore_error(
    replicas: tuple[PostgresGrantStore, PostgresGrantStore], dsn: str, schema: str
) -> None:
    a, _ = replicas
    await a.create(make_grant())
    other = await PostgresGrantStore.connect(dsn, SoftSealer(), FakeClock(), schema=schema)
    try:
        with pytest.raises(KeyStoreError):
            await other.get("g-1")
        with pytest.raises(KeyStoreError):
            await other.list(label="billing")
    finally:
        await other.close()


async def test_migrations_create_schema_once_even_with_replicas_starting_together(
    dsn: str, schema: str, sealer: SoftSealer
) -> None:
    stores = await asyncio.gather(
        *(PostgresGrantStore.connect(dsn, sealer, FakeClock(), schema=schema) for _ in range(4))
    )
    try:
        for store in stores:
            assert await store.schema_version() == SCHEMA_VERSION
        await stores[0].create(make_grant())
        assert (await stores[3].get("g-1")).refresh_token == "RT-g-1-v1-plaintext"
    finally:
        for store in stores:
            await store.close()
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn:
        cur = await conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY version").format(
                sql.Identifier(schema)
            )
        )
        assert await cur.fetchall() == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


async def test_schema_from_a_newer_broker_is_refused(
    dsn: str, schema: str, sealer: SoftSealer
) -> None:
    store = await PostgresGrantStore.connect(dsn, sealer, FakeClock(), schema=schema)
    await store.close()
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn:
        await conn.execute(
            sql.SQL("INSERT INTO {}.schema_migrations VALUES (%s, 0)").format(
                sql.Identifier(schema)
            ),
            (SCHEMA_VERSION + 1,),
        )
    store = PostgresGrantStore(dsn, sealer, FakeClock(), schema=schema)
    with pytest.raises(ConfigError, match="schema is at version"):
        await store.open()
    await store.close()


async def test_unreachable_server_is_a_retryable_store_error_without_the_password() -> None:
    dsn = "postgresql://postgres:pw-s3cret@127.0.0.1:1/test"
    store = PostgresGrantStore(dsn, SoftSealer(), FakeClock(), schema="nowhere", connect_timeout=2)
    assert "pw-s3cret" not in repr(store)
    with pytest.raises(StoreError) as info:
        await store.open()
    assert info.value.retryable
    assert "pw-s3cret" not in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.Error)
    await store.close()


async def test_ping_on_a_lost_server_connection_is_a_store_error(
    dsn: str, schema: str, sealer: SoftSealer
) -> None:
    a = await PostgresGrantStore.connect(dsn, sealer, FakeClock(), schema=schema)
    await a.ping()
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    async with conn:  # terminate the pooled session of this test's store (and only it)
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (f"broker-grants:{schema}",),
        )
        assert await cur.fetchone() == (1,)
    with pytest.raises(StoreError):
        await a.ping()
    await a.ping()  # the broken connection was dropped; a new one works
    await a.close()


@pytest.mark.parametrize("bad", ["", "1abc", "a-b", "a;drop", "x" * 64, 'quo"te'])
def test_bad_schema_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        PostgresGrantStore(
            "postgresql://postgres@127.0.0.1/test", SoftSealer(), FakeClock(), schema=bad
        )


async def test_refresh_lock_survives_a_dead_idle_lock_session(
    dsn: str, schema: str, sealer: SoftSealer
) -> None:
    a = await PostgresGrantStore.connect(dsn, sealer, FakeClock(), schema=schema)
    b = await PostgresGrantStore.connect(dsn, sealer, FakeClock(), schema=schema)
    try:
        async with a.refresh_lock("g-1"):
            pass  # released cleanly: the session is kept for the next lock
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        async with conn:  # kill every session of this schema's stores (pool + idle lock)
            cur = await conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"broker-grants:{schema}",),
            )
            row = await cur.fetchone()
            assert row is not None and row[0] >= 2
        log: list[str] = []
        async with a.refresh_lock("g-1"):
            waiter = asyncio.create_task(_take(b, "g-1", log, "replica-b"))
            await wait_until(_waiting(dsn, schema, "g-1"), "replica B waits behind the new session")
            log.append("a-released")
        await asyncio.wait_for(waiter, HANG_GUARD_S)
        assert log == ["a-released", "replica-b"]
    finally:
        await a.close()
        await b.close()
