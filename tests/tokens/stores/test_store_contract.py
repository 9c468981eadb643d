"""GrantStore contract suite: the same tests against memory, SQLite and PostgreSQL.

PostgreSQL: each store gets its own schema (``test_store_<uuid>``) in the local database
``test``, dropped afterwards. Without a reachable server the postgres cases are skipped with a
loud reason, unless ``BROKER_REQUIRE_POSTGRES=1`` (then they fail).

The helpers shared with the other store tests (``make_grant``, ``make_tokens``,
``postgres_dsn_or_skip``, ``pg_schema_name``, ``drop_pg_schema``, ``wait_until``) are in
:mod:`tests.tokens.stores.helpers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from broker.errors import (
    GrantExists,
    GrantNotFound,
    InvalidArgument,
    StoreError,
    VersionConflict,
)
from broker.keys.soft import SoftSealer
from broker.oauth.types import TokenSet
from broker.tokens.model import Grant, GrantKind, GrantStatus
from broker.tokens.stores.base import GrantStore
from broker.tokens.stores.memory import MemoryGrantStore
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import (
    HANG_GUARD_S,
    drop_pg_schema,
    make_grant,
    make_tokens,
    pg_schema_name,
    postgres_dsn_or_skip,
)


async def assert_lock_held(store: GrantStore, grant_id: str) -> None:
    """A second ``refresh_lock`` of this store does not enter while the first is held.

    The in-process lock is taken before any I/O, so the second task blocks at once: letting the
    loop run a few rounds is enough to observe it (no timing involved).
    """
    entered = asyncio.Event()

    async def second() -> None:
        async with store.refresh_lock(grant_id):
            entered.set()

    task = asyncio.create_task(second())
    for _ in range(20):
        await asyncio.sleep(0)
    held = not entered.is_set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert held, f"a second holder entered refresh_lock({grant_id!r})"


async def assert_lock_free(store: GrantStore, grant_id: str) -> None:
    """``refresh_lock`` can be taken (and released) now."""
    async with asyncio.timeout(HANG_GUARD_S), store.refresh_lock(grant_id):
        pass


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sealer() -> SoftSealer:
    return SoftSealer()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Any, clock: FakeClock, sealer: SoftSealer
) -> AsyncIterator[GrantStore]:
    kind = request.param
    if kind == "memory":
        memory = MemoryGrantStore(clock)
        yield memory
        await memory.close()
    elif kind == "sqlite":
        lite = await SqliteGrantStore.connect(str(tmp_path / "grants.db"), sealer, clock)
        yield lite
        await lite.close()
    else:
        dsn = postgres_dsn_or_skip()
        schema = pg_schema_name()
        pg = await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema)
        try:
            yield pg
        finally:
            await pg.close()
            drop_pg_schema(dsn, schema)


# --- create / get / list ------------------------------------------------------------------------


async def test_create_then_get_returns_every_field(store: GrantStore) -> None:
    grant = make_grant(refresh_started_at=None, last_error=None, version=1)
    await store.create(grant)
    assert await store.get("g-1") == grant
    got = await store.get("g-1")
    assert got.access_token == grant.access_token
    assert got.refresh_token == grant.refresh_token
    assert dict(got.id_claims) == dict(grant.id_claims)


async def test_create_without_refresh_token_round_trips_none(store: GrantStore) -> None:
    await store.create(make_grant(refresh_token=None, id_claims={}))
    got = await store.get("g-1")
    assert got.refresh_token is None
    assert dict(got.id_claims) == {}


async def test_create_twice_raises_grant_exists_and_keeps_the_first(store: GrantStore) -> None:
    await store.create(make_grant())
    with pytest.raises(GrantExists) as info:
        await store.create(make_grant(access_token="AT-other"))
    assert info.value.retryable is False
    assert (await store.get("g-1")).access_token == "AT-g-1-v1-plaintext"


async def test_list_all_and_by_label(store: GrantStore) -> None:
    await store.create(make_grant("g-b", label="billing"))
    await store.create(make_grant("g-a", label="billing"))
    await store.create(make_grant("g-c", label="shipping"))
    assert [g.grant_id for g in await store.list()] == ["g-a", "g-b", "g-c"]
    assert [g.grant_id for g in await store.list(label="billing")] == ["g-a", "g-b"]
    assert [g.grant_id for g in await store.list(label="shipping")] == ["g-c"]
    assert await store.list(label="nobody") == []


# --- refresh intent and rotation ----------------------------------------------------------------


async def test_g02_mark_refresh_started_records_intent(store: GrantStore) -> None:
    await store.create(make_grant())
    await store.mark_refresh_started("g-1", 1_800_000_100.0)
    got = await store.get("g-1")
    assert got.refresh_started_at == 1_800_000_100.0
    assert got.version == 1
    assert got.refresh_token == "RT-g-1-v1-plaintext"


async def test_a08a_rotate_without_refresh_token_keeps_old_one(
    store: GrantStore, clock: FakeClock
) -> None:
    await store.create(make_grant())
    await store.mark_refresh_started("g-1", 1_800_000_100.0)
    await store.record_error("g-1", "as_unavailable")
    clock.advance(5)
    rotated = await store.rotate("g-1", make_tokens("v2", refresh=None), expected_version=1)
    assert rotated.access_token == "AT-v2"
    assert rotated.refresh_token == "RT-g-1-v1-plaintext"
    assert rotated.version == 2
    assert rotated.access_expires_at == 1_800_003_600.0
    assert rotated.refresh_started_at is None
    assert rotated.last_error is None
    assert rotated.updated_at == clock.now()
    assert dict(rotated.id_claims) == {"sub": "user-7", "email": "alice.pii@example.org"}
    assert await store.get("g-1") == rotated


async def test_a08b_rotate_with_new_refresh_token_replaces_it(store: GrantStore) -> None:
    await store.create(make_grant())
    new_claims = {"sub": "user-7", "email": "new.pii@example.org"}
    rotated = await store.rotate(
        "g-1",
        make_tokens("v2", refresh="RT-v2", scope="openid", id_claims=new_claims),
        expected_version=1,
    )
    assert rotated.refresh_token == "RT-v2"
    assert rotated.scope == "openid"
    assert dict(rotated.id_claims) == new_claims
    again = await store.rotate("g-1", make_tokens("v3", refresh="RT-v3"), expected_version=2)
    assert (again.version, again.refresh_token, again.access_token) == (3, "RT-v3", "AT-v3")
    assert await store.get("g-1") == again


async def test_rotate_with_stale_version_raises_conflict_and_changes_nothing(
    store: GrantStore,
) -> None:
    await store.create(make_grant())
    await store.rotate("g-1", make_tokens("v2", refresh="RT-v2"), expected_version=1)
    before = await store.get("g-1")
    with pytest.raises(VersionConflict) as info:
        await store.rotate("g-1", make_tokens("lost", refresh="RT-lost"), expected_version=1)
    assert isinstance(info.value, StoreError)
    assert "RT-lost" not in str(info.value)
    assert await store.get("g-1") == before


async def test_concurrent_rotations_of_one_version_have_one_winner(store: GrantStore) -> None:
    await store.create(make_grant())
    results = await asyncio.gather(
        *(
            store.rotate("g-1", make_tokens(f"r{i}", refresh=f"RT-r{i}"), expected_version=1)
            for i in range(10)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, Grant)]
    assert len(winners) == 1
    assert all(isinstance(r, VersionConflict) for r in results if r is not winners[0])
    stored = await store.get("g-1")
    assert stored == winners[0]
    assert stored.version == 2
    assert stored.refresh_token == "RT-" + stored.access_token.removeprefix("AT-")


async def test_set_status_changes_status_and_reason_and_clears_intent(store: GrantStore) -> None:
    await store.create(make_grant())
    await store.mark_refresh_started("g-1", 1_800_000_100.0)
    dead = await store.set_status(
        "g-1", GrantStatus.REAUTHORIZATION_REQUIRED, reason="invalid_grant"
    )
    assert dead.status is GrantStatus.REAUTHORIZATION_REQUIRED
    assert dead.last_error == "invalid_grant"
    assert dead.refresh_started_at is None
    assert dead.refresh_token == "RT-g-1-v1-plaintext"
    assert await store.get("g-1") == dead
    revived = await store.set_status("g-1", GrantStatus.ACTIVE, reason=None)
    assert (revived.status, revived.last_error) == (GrantStatus.ACTIVE, None)


async def test_record_error_keeps_status_and_tokens(store: GrantStore) -> None:
    await store.create(make_grant())
    await store.record_error("g-1", "as_unavailable: 503")
    got = await store.get("g-1")
    assert got.last_error == "as_unavailable: 503"
    assert got.status is GrantStatus.ACTIVE
    assert (got.version, got.refresh_token) == (1, "RT-g-1-v1-plaintext")


async def test_delete_removes_the_grant(store: GrantStore) -> None:
    await store.create(make_grant())
    await store.create(make_grant("g-2"))
    await store.delete("g-1")
    with pytest.raises(GrantNotFound):
        await store.get("g-1")
    with pytest.raises(GrantNotFound):
        await store.delete("g-1")
    assert [g.grant_id for g in await store.list()] == ["g-2"]


@pytest.mark.parametrize(
    "operation",
    ["get", "mark_refresh_started", "rotate", "set_status", "record_error", "delete"],
)
async def test_unknown_grant_raises_grant_not_found(store: GrantStore, operation: str) -> None:
    await store.create(make_grant("g-known"))
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get": lambda: store.get("g-missing"),
        "mark_refresh_started": lambda: store.mark_refresh_started("g-missing", 1.0),
        "rotate": lambda: store.rotate("g-missing", make_tokens("x"), expected_version=1),
        "set_status": lambda: store.set_status("g-missing", GrantStatus.REVOKED, reason=None),
        "record_error": lambda: store.record_error("g-missing", "boom"),
        "delete": lambda: store.delete("g-missing"),
    }
    with pytest.raises(GrantNotFound) as info:
        await calls[operation]()
    assert info.value.reason == "grant_not_found"
    assert [g.grant_id for g in await store.list()] == ["g-known"]


# --- bad input: a typed error, nothing lost ----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"grant_id": ""}, "grant_id"),
        ({"grant_id": "a\nb"}, "grant_id"),
        ({"grant_id": "x" * 300}, "grant_id"),
        ({"access_token": ""}, "access_token"),
        ({"refresh_token": ""}, "refresh_token"),
        ({"subject": ""}, "subject"),
        ({"status": "active"}, "status"),
        ({"access_expires_at": float("nan")}, "access_expires_at"),
        ({"version": 0}, "expected_version"),
        ({"id_claims": {"when": object()}}, "id_claims"),
        ({"last_error": "x" * 5000}, "reason"),
    ],
)
async def test_create_rejects_malformed_grant(
    store: GrantStore, overrides: dict[str, Any], field: str
) -> None:
    await store.create(make_grant("g-keep"))
    bad = dataclasses.replace(make_grant("g-bad"), **overrides)
    with pytest.raises(InvalidArgument) as info:
        await store.create(bad)
    assert field in str(info.value)
    assert "plaintext" not in str(info.value)
    assert [g.grant_id for g in await store.list()] == ["g-keep"]


@pytest.mark.parametrize(
    ("tokens", "version"),
    [
        (make_tokens("x", access_token=""), 1),
        (make_tokens("x", refresh=""), 1),
        (make_tokens("x", expires_at=float("inf")), 1),
        (make_tokens("x", id_claims={"bad": {1, 2}}), 1),
        (make_tokens("x"), 0),
        (make_tokens("x"), True),
    ],
)
async def test_rotate_rejects_bad_input_and_keeps_the_grant(
    store: GrantStore, tokens: TokenSet, version: Any
) -> None:
    await store.create(make_grant())
    before = await store.get("g-1")
    with pytest.raises(InvalidArgument):
        await store.rotate("g-1", tokens, expected_version=version)
    assert await store.get("g-1") == before


async def test_other_operations_reject_bad_arguments(store: GrantStore) -> None:
    await store.create(make_grant())
    before = await store.get("g-1")
    with pytest.raises(InvalidArgument):
        await store.get("")
    with pytest.raises(InvalidArgument):
        await store.list(label="a\x00b")
    with pytest.raises(InvalidArgument):
        await store.mark_refresh_started("g-1", float("nan"))
    with pytest.raises(InvalidArgument):
        await store.set_status("g-1", "revoked", reason=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await store.record_error("g-1", "")
    with pytest.raises(InvalidArgument):
        store.refresh_lock("")
    assert await store.get("g-1") == before


# --- refresh_lock, ping, close ------------------------------------------------------------------


async def test_refresh_lock_excludes_a_second_holder(store: GrantStore) -> None:
    await store.create(make_grant())
    order: list[str] = []
    async with store.refresh_lock("g-1"):
        second = asyncio.create_task(_hold(store, "g-1", order, "second"))
        await assert_lock_held(store, "g-1")
        order.append("first-done")
    await asyncio.wait_for(second, HANG_GUARD_S)
    assert order == ["first-done", "second"]
    await assert_lock_free(store, "g-1")


async def _hold(store: GrantStore, grant_id: str, order: list[str], name: str) -> None:
    async with store.refresh_lock(grant_id):
        order.append(name)


async def test_refresh_lock_of_other_grants_is_independent(store: GrantStore) -> None:
    await store.create(make_grant("g-1"))
    await store.create(make_grant("g-2"))
    async with store.refresh_lock("g-1"):
        await assert_lock_free(store, "g-2")
        async with store.refresh_lock("g-2"):
            await assert_lock_held(store, "g-2")


async def test_refresh_lock_is_released_when_the_body_fails(store: GrantStore) -> None:
    await store.create(make_grant())
    with pytest.raises(RuntimeError):
        async with store.refresh_lock("g-1"):
            raise RuntimeError("refresh blew up")
    await assert_lock_free(store, "g-1")


async def test_ping_then_close_then_store_error(store: GrantStore) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(StoreError) as info:
        await store.ping()
    assert info.value.retryable
    with pytest.raises(StoreError):
        await store.get("g-1")
    await store.close()  # idempotent


async def test_grant_kind_round_trips(store: GrantStore) -> None:
    """A machine grant (no refresh token) keeps its kind through create, list and rotate;
    grants made without a kind are user grants."""
    machine = make_grant("m-1", refresh_token=None, kind=GrantKind.MACHINE)
    await store.create(machine)
    await store.create(make_grant("u-1"))
    assert {g.grant_id: g.kind for g in await store.list()} == {
        "m-1": GrantKind.MACHINE,
        "u-1": GrantKind.USER,
    }
    rotated = await store.rotate("m-1", make_tokens("m2"), expected_version=1)
    assert (rotated.kind, rotated.refresh_token, rotated.access_token) == (
        GrantKind.MACHINE,
        None,
        "AT-m2",
    )
