"""In-memory grant store: the fault-injection hook the token core's unit tests use."""

from __future__ import annotations

import pytest

from broker.errors import InvalidArgument, StoreError
from broker.tokens.stores.memory import KeyedLocks, MemoryGrantStore
from tests.clock import FakeClock
from tests.tokens.test_store_contract import make_grant, make_tokens


async def test_g04_fail_next_rotate_raises_once_and_changes_nothing() -> None:
    store = MemoryGrantStore(FakeClock())
    await store.create(make_grant())
    store.fail_next("rotate", StoreError("disk full"))
    with pytest.raises(StoreError, match="disk full"):
        await store.rotate("g-1", make_tokens("v2", refresh="RT-v2"), expected_version=1)
    assert (await store.get("g-1")).refresh_token == "RT-g-1-v1-plaintext"
    rotated = await store.rotate("g-1", make_tokens("v2", refresh="RT-v2"), expected_version=1)
    assert rotated.refresh_token == "RT-v2"


async def test_fail_next_on_refresh_lock_raises_at_enter() -> None:
    store = MemoryGrantStore(FakeClock())
    store.fail_next("refresh_lock", StoreError("lock backend down"))
    with pytest.raises(StoreError):
        async with store.refresh_lock("g-1"):
            pytest.fail("entered a lock that was set to fail")
    async with store.refresh_lock("g-1"):
        pass


def test_fail_next_rejects_unknown_operation() -> None:
    with pytest.raises(InvalidArgument, match="unknown store operation"):
        MemoryGrantStore().fail_next("rotat", StoreError("x"))


async def test_keyed_locks_forget_released_keys() -> None:
    locks = KeyedLocks()
    async with locks.hold("a"):
        assert locks.locked("a")
        assert len(locks) == 1
    assert not locks.locked("a")
    assert len(locks) == 0


async def test_stored_claims_are_a_copy() -> None:
    claims = {"sub": "user-7"}
    store = MemoryGrantStore(FakeClock())
    await store.create(make_grant(id_claims=claims))
    claims["sub"] = "mallory"
    assert (await store.get("g-1")).id_claims["sub"] == "user-7"
