"""The tests' fault-injecting memory store (:mod:`tests.tokens.stores.faulty_store`), and that the
production memory store carries no fault injection of its own."""

from __future__ import annotations

import pytest

from broker.errors import InvalidArgument, StoreError
from broker.tokens.stores.memory import MemoryGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.faulty_store import OPERATIONS, FaultyMemoryStore
from tests.tokens.stores.helpers import make_grant, make_tokens


async def test_g04_fail_next_rotate_raises_once_and_changes_nothing() -> None:
    store = FaultyMemoryStore(FakeClock())
    await store.create(make_grant())
    store.fail_next("rotate", StoreError("disk full"))
    with pytest.raises(StoreError, match="disk full"):
        await store.rotate("g-1", make_tokens("v2", refresh="RT-v2"), expected_version=1)
    assert (await store.get("g-1")).refresh_token == "RT-g-1-v1-plaintext"
    rotated = await store.rotate("g-1", make_tokens("v2", refresh="RT-v2"), expected_version=1)
    assert rotated.refresh_token == "RT-v2"


async def test_fail_next_on_refresh_lock_raises_at_enter() -> None:
    store = FaultyMemoryStore(FakeClock())
    store.fail_next("refresh_lock", StoreError("lock backend down"))
    with pytest.raises(StoreError):
        async with store.refresh_lock("g-1"):
            pytest.fail("entered a lock that was set to fail")
    async with store.refresh_lock("g-1"):
        pass


async def test_a_closed_store_says_so_before_an_injected_fault() -> None:
    store = FaultyMemoryStore(FakeClock())
    store.fail_next("ping", StoreError("injected"))
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.ping()


def test_fail_next_rejects_unknown_operation() -> None:
    with pytest.raises(InvalidArgument, match="unknown store operation"):
        FaultyMemoryStore().fail_next("rotat", StoreError("x"))


def test_the_operations_are_the_stores_own_methods() -> None:
    """Read from the store's source: every one a method of the store, the core's calls among
    them."""
    assert {"create", "get", "rotate", "set_status", "refresh_lock", "ping", "claim_due"} <= (
        OPERATIONS
    )
    assert all(callable(getattr(MemoryGrantStore, name, None)) for name in OPERATIONS)


def test_the_production_memory_store_has_no_fault_injection() -> None:
    store = MemoryGrantStore(FakeClock())
    assert not hasattr(store, "fail_next")
    assert not hasattr(store, "_faults")
