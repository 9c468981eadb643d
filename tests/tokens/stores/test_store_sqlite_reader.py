"""SQLite store reader: ``get`` reads on its own read-only connection and thread, so it does not
wait behind the writer's thread (a group commit and its fsync), and sees every committed write."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from broker.errors import StoreError
from broker.keys.soft import SoftSealer
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import make_grant, make_tokens

DEADLINE = 30.0  # seconds: generous, the machine may be busy


async def test_get_does_not_wait_for_the_writer_thread(tmp_path: Path) -> None:
    store = await SqliteGrantStore.connect(str(tmp_path / "g.db"), SoftSealer(), FakeClock())
    await store.create(make_grant("g-1"))
    gate = threading.Event()
    store._executor.submit(gate.wait, DEADLINE)  # the writer's thread is busy
    try:
        got = await asyncio.wait_for(store.get("g-1"), DEADLINE / 2)
        assert (got.version, got.refresh_token) == (1, "RT-g-1-v1-plaintext")
        assert not gate.is_set()
    finally:
        gate.set()
    await store.rotate("g-1", make_tokens("v2", refresh="RT-v2"), expected_version=1)
    got = await store.get("g-1")  # the reader sees what the writer committed
    assert (got.version, got.access_token, got.refresh_token) == (2, "AT-v2", "RT-v2")
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.get("g-1")


async def test_the_reader_connection_cannot_write(tmp_path: Path) -> None:
    store = await SqliteGrantStore.connect(str(tmp_path / "g.db"), SoftSealer(), FakeClock())
    await store.create(make_grant("g-1"))
    with pytest.raises(StoreError, match=r"sqlite probe failed"):
        await store._reader.run("probe", lambda c: c.execute("DELETE FROM grants"))
    assert (await store.get("g-1")).version == 1
    await store.close()
