"""In-memory grant store: what the contract suite does not cover (its lock table, copies)."""

from __future__ import annotations

from broker.tokens.stores.keyed_locks import KeyedLocks
from broker.tokens.stores.memory import MemoryGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import make_grant


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
