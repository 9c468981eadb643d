"""SQLite group commit: writes queued while the store's thread is busy share one transaction
(one COMMIT, one fsync), each keeps its own outcome, and each caller is answered only once the
COMMIT holding its write returned."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.errors import StoreError, VersionConflict
from broker.keys.soft import SoftSealer
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import make_grant, make_tokens

DEADLINE = 30.0  # seconds: generous, the machine may be busy
GRANTS = ("g-1", "g-2", "g-3", "g-4")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteGrantStore]:
    s = await SqliteGrantStore.connect(str(tmp_path / "grants.db"), SoftSealer(), FakeClock())
    for gid in GRANTS:
        await s.create(make_grant(gid))
    yield s
    await s.close()


async def traced(store: SqliteGrantStore) -> list[str]:
    statements: list[str] = []
    await store._run("trace", lambda c: c.set_trace_callback(statements.append))
    return statements


async def wait_queued(store: SqliteGrantStore, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while store._writes.queued() < count:
        assert loop.time() < deadline, f"{store._writes.queued()} writes queued, not {count}"
        await asyncio.sleep(0.01)


def block_store_thread(store: SqliteGrantStore) -> threading.Event:
    """Occupy the store's one thread until the returned event is set."""
    gate = threading.Event()
    store._executor.submit(gate.wait, DEADLINE)
    return gate


async def test_queued_writes_share_one_commit_and_keep_their_own_outcomes(
    store: SqliteGrantStore,
) -> None:
    statements = await traced(store)
    gate = block_store_thread(store)
    rotations = [
        asyncio.create_task(
            store.rotate(gid, make_tokens(f"{gid}-v2", refresh=f"RT-{gid}-v2"), expected_version=1)
        )
        for gid in ("g-1", "g-2", "g-3")
    ]
    stale = asyncio.create_task(
        store.rotate("g-4", make_tokens("g-4-v9", refresh="RT-g-4-v9"), expected_version=7)
    )
    marked = asyncio.create_task(store.mark_refresh_started("g-4", 1_800_000_100.0))
    await wait_queued(store, 5)
    assert not any(t.done() for t in (*rotations, stale, marked))  # nothing answered before
    statements.clear()
    gate.set()
    stored = await asyncio.gather(*rotations)
    with pytest.raises(VersionConflict):
        await stale
    await marked
    assert [s.strip().upper() for s in statements].count("COMMIT") == 1
    assert [(g.grant_id, g.version, g.refresh_token) for g in stored] == [
        (gid, 2, f"RT-{gid}-v2") for gid in ("g-1", "g-2", "g-3")
    ]
    for gid in ("g-1", "g-2", "g-3"):
        got = await store.get(gid)
        assert (got.version, got.access_token) == (2, f"AT-{gid}-v2")
    g4 = await store.get("g-4")  # the conflict rolled back alone; the intent is stored
    assert (g4.version, g4.refresh_token, g4.refresh_started_at) == (
        1,
        "RT-g-4-v1-plaintext",
        1_800_000_100.0,
    )


class FailOneUpdate:
    """Wraps the store's connection: the UPDATE of one grant raises an I/O error."""

    def __init__(self, conn: sqlite3.Connection, grant_id: str) -> None:
        self._conn = conn
        self._grant_id = grant_id

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("UPDATE grants") and args and args[0][-1] == self._grant_id:
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_a_sqlite_error_in_one_write_leaves_the_others_committed(
    store: SqliteGrantStore,
) -> None:
    real = store._conn
    assert real is not None
    store._conn = FailOneUpdate(real, "g-2")  # type: ignore[assignment]
    gate = block_store_thread(store)
    tasks = {
        gid: asyncio.create_task(
            store.rotate(gid, make_tokens(f"{gid}-v2", refresh=f"RT-{gid}-v2"), expected_version=1)
        )
        for gid in ("g-1", "g-2", "g-3")
    }
    await wait_queued(store, 3)
    gate.set()
    await asyncio.wait(tasks.values(), timeout=DEADLINE)
    with pytest.raises(StoreError, match=r"sqlite rotate failed"):
        tasks["g-2"].result()
    assert tasks["g-1"].result().version == 2
    assert tasks["g-3"].result().version == 2
    store._conn = real
    assert [(await store.get(g)).version for g in ("g-1", "g-2", "g-3")] == [2, 1, 2]
    assert not real.in_transaction


async def test_a_cancelled_write_still_queued_is_not_written(store: SqliteGrantStore) -> None:
    gate = block_store_thread(store)
    cancelled = asyncio.create_task(store.record_error("g-1", "network_error"))
    kept = asyncio.create_task(store.record_error("g-2", "network_error"))
    await wait_queued(store, 2)
    cancelled.cancel()
    gate.set()
    await kept
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert (await store.get("g-1")).last_error is None
    assert (await store.get("g-2")).last_error == "network_error"
