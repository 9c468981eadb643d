"""Scheduling without opening tokens, and refresh leases shared by replicas (issue 11): the
GrantIndex and RefreshClaims roles against memory, SQLite and PostgreSQL.

"Two replicas" are two store objects on one database (memory: ``shared_with``; SQLite: one
file; PostgreSQL: one schema). A counting sealer shows what the SQL stores open: listing and
scheduling open nothing, a rotation opens only what it was not given (G07 for the leases).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.errors import InvalidArgument
from broker.keys.soft import SoftSealer
from broker.tokens.model import Grant, GrantStatus, GrantSummary
from broker.tokens.stores.memory import MemoryGrantStore
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import (
    CountingSealer,
    drop_pg_schema,
    make_grant,
    make_tokens,
    pg_schema_name,
    postgres_dsn_or_skip,
)

NOW = 1_800_000_000.0
LEAD = 100.0


@dataclass(frozen=True)
class LeadRule:
    """Due ``LEAD`` seconds before the access token expires (easy to predict)."""

    def due_at(
        self, grant_id: str, version: int, *, issued_at: float | None, expires_at: float
    ) -> float:
        return expires_at - LEAD


@dataclass
class Replicas:
    kind: str
    a: Any
    b: Any
    sealer: CountingSealer
    clock: FakeClock
    db: str | None = None


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Replicas]:
    kind = request.param
    clock = FakeClock(NOW)
    sealer = CountingSealer()
    rule = LeadRule()
    a: Any
    b: Any
    if kind == "memory":
        a = MemoryGrantStore(clock, due_rule=rule)
        b = MemoryGrantStore(clock, shared_with=a, due_rule=rule)
        yield Replicas(kind, a, b, sealer, clock)
        await a.close()
        await b.close()
    elif kind == "sqlite":
        path = str(tmp_path / "grants.db")
        a = await SqliteGrantStore.connect(path, sealer, clock, due_rule=rule)
        b = await SqliteGrantStore.connect(path, sealer, clock, due_rule=rule)
        yield Replicas(kind, a, b, sealer, clock, db=path)
        await a.close()
        await b.close()
    else:
        dsn = postgres_dsn_or_skip()
        schema = pg_schema_name()
        a = await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema, due_rule=rule)
        b = await PostgresGrantStore.connect(dsn, sealer, clock, schema=schema, due_rule=rule)
        try:
            yield Replicas(kind, a, b, sealer, clock)
        finally:
            await a.close()
            await b.close()
            drop_pg_schema(dsn, schema)


def _projection(grant: Grant, summary: GrantSummary) -> GrantSummary:
    """What a summary of ``grant`` must hold (its due time and claim come from the store)."""
    return GrantSummary(
        grant_id=grant.grant_id,
        label=grant.label,
        issuer=grant.issuer,
        client_id=grant.client_id,
        subject=grant.subject,
        scope=grant.scope,
        status=grant.status,
        kind=grant.kind,
        version=grant.version,
        access_expires_at=grant.access_expires_at,
        access_issued_at=grant.access_issued_at,
        refresh_expires_at=grant.refresh_expires_at,
        refresh_started_at=grant.refresh_started_at,
        refresh_due_at=summary.refresh_due_at,
        created_at=grant.created_at,
        updated_at=grant.updated_at,
        last_error=grant.last_error,
        claimed_by=summary.claimed_by,
        claim_until=summary.claim_until,
    )


async def _seed(store: Any, n: int, *, first_expiry: float = NOW + 50) -> list[str]:
    """``n`` grants expiring one second apart from ``first_expiry`` (due LEAD s before)."""
    ids = [f"g-{i:04d}" for i in range(n)]
    for i, gid in enumerate(ids):
        await store.create(make_grant(gid, access_expires_at=first_expiry + i))
    return ids


# --- GrantIndex -----------------------------------------------------------------------------------


async def test_list_metadata_is_list_without_secrets_and_opens_nothing(r: Replicas) -> None:
    await r.a.create(make_grant("g-1", access_issued_at=NOW - 10, refresh_expires_at=NOW + 900))
    await r.a.create(make_grant("g-2", label="other", last_error="as_unavailable"))
    await r.a.set_status("g-2", GrantStatus.REVOKED, reason="revoked_by_operator")
    grants = await r.b.list()
    opens = r.sealer.opens
    summaries = await r.b.list_metadata()
    assert r.sealer.opens == opens, "list_metadata opened a sealed field"
    assert [s.grant_id for s in summaries] == ["g-1", "g-2"]
    for grant, summary in zip(grants, summaries, strict=True):
        assert summary == _projection(grant, summary)
    assert summaries[0].refresh_due_at == grants[0].access_expires_at - LEAD
    assert [s.grant_id for s in await r.b.list_metadata(label="other")] == ["g-2"]
    assert "access_token" not in repr(summaries) and "RT-" not in repr(summaries)


async def test_count_by_status_counts_on_every_replica_opening_nothing(r: Replicas) -> None:
    ids = await _seed(r.a, 4)
    assert await r.b.count_by_status(GrantStatus.REAUTHORIZATION_REQUIRED) == 0
    await r.a.set_status(ids[0], GrantStatus.REAUTHORIZATION_REQUIRED, reason="invalid_grant")
    await r.a.set_status(ids[2], GrantStatus.REAUTHORIZATION_REQUIRED, reason="invalid_grant")
    await r.a.set_status(ids[3], GrantStatus.REVOKED, reason="revoked_by_operator")
    opens = r.sealer.opens
    assert await r.b.count_by_status(GrantStatus.REAUTHORIZATION_REQUIRED) == 2
    assert await r.b.count_by_status(GrantStatus.REVOKED) == 1
    assert await r.b.count_by_status(GrantStatus.ACTIVE) == 1
    assert r.sealer.opens == opens, "count_by_status opened a sealed field"
    with pytest.raises(InvalidArgument):
        await r.b.count_by_status("reauthorization_required")
    if r.db is not None:  # SQLite answers from the status index alone
        with sqlite3.connect(r.db) as conn:
            plan = conn.execute(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM grants WHERE status = ?", ("active",)
            ).fetchall()
        assert "COVERING INDEX grants_by_status" in " ".join(str(row[-1]) for row in plan)


async def test_due_returns_active_due_grants_earliest_first_opening_nothing(r: Replicas) -> None:
    ids = await _seed(r.a, 5)  # expiring NOW+50 .. NOW+54: due NOW-50 .. NOW-46
    await r.a.create(make_grant("late", access_expires_at=NOW + 3600))
    await r.a.set_status(ids[1], GrantStatus.REAUTHORIZATION_REQUIRED, reason="invalid_grant")
    opens = r.sealer.opens
    due = await r.b.due(NOW)
    assert [g.grant_id for g in due] == [ids[0], ids[2], ids[3], ids[4]]
    assert [g.grant_id for g in await r.b.due(NOW, limit=2)] == [ids[0], ids[2]]
    assert [g.grant_id for g in await r.b.due(NOW - 49)] == [ids[0]]  # due at NOW-50 only
    horizon = await r.b.due(NOW, horizon=3600 - LEAD)
    assert [g.grant_id for g in horizon][-1] == "late"
    assert r.sealer.opens == opens, "due() opened a sealed field"


async def test_rotate_moves_the_due_time_and_takes_the_cores_override(r: Replicas) -> None:
    await r.a.create(make_grant("g-1", access_expires_at=NOW + 50))
    assert [g.grant_id for g in await r.b.due(NOW)] == ["g-1"]
    await r.a.rotate(
        "g-1", make_tokens("v2", expires_at=NOW + 600, received_at=NOW), expected_version=1
    )
    assert await r.b.due(NOW) == []
    (summary,) = await r.b.list_metadata()
    assert (summary.version, summary.refresh_due_at) == (2, NOW + 600 - LEAD)
    await r.a.rotate(
        "g-1",
        make_tokens("v3", expires_at=NOW + 600, received_at=NOW),
        expected_version=2,
        refresh_due_at=NOW - 1,
    )
    assert [g.grant_id for g in await r.b.due(NOW)] == ["g-1"]


@dataclass(frozen=True)
class LaterRule:
    def due_at(
        self, grant_id: str, version: int, *, issued_at: float | None, expires_at: float
    ) -> float:
        return expires_at - 10


async def test_reschedule_recomputes_active_due_times_opening_nothing(r: Replicas) -> None:
    ids = await _seed(r.a, 3)
    await r.a.set_status(ids[2], GrantStatus.REVOKED, reason="revoked_by_operator")
    opens = r.sealer.opens
    assert await r.a.reschedule(LeadRule()) == 0  # the rule in use: nothing to do
    assert await r.a.reschedule(LaterRule()) == 2
    meta = {g.grant_id: g.refresh_due_at for g in await r.b.list_metadata()}
    assert meta[ids[0]] == NOW + 50 - 10 and meta[ids[1]] == NOW + 51 - 10
    await r.a.create(make_grant("new", access_expires_at=NOW + 500))
    assert [g.refresh_due_at for g in await r.b.list_metadata() if g.grant_id == "new"] == [
        NOW + 490
    ]
    assert r.sealer.opens == opens


async def test_due_queries_are_validated(r: Replicas) -> None:
    with pytest.raises(InvalidArgument):
        await r.a.due(NOW, limit=0)
    with pytest.raises(InvalidArgument):
        await r.a.due(NOW, horizon=-1)
    with pytest.raises(InvalidArgument):
        await r.a.claim_due(NOW, owner="a", lease=0)
    with pytest.raises(InvalidArgument):
        await r.a.claim_due(NOW, owner="", lease=30)


# --- RefreshClaims (G07) --------------------------------------------------------------------------


async def test_g07_replicas_claim_disjoint_sets_of_due_grants(r: Replicas) -> None:
    ids = await _seed(r.a, 10)
    first = await r.a.claim_due(NOW, owner="replica-a", lease=30, limit=4)
    second = await r.b.claim_due(NOW, owner="replica-b", lease=30)
    assert [g.grant_id for g in first] == ids[:4]
    assert [g.grant_id for g in second] == ids[4:]
    assert {g.claimed_by for g in first} == {"replica-a"}
    assert {g.claim_until for g in second} == {NOW + 30}
    assert await r.b.claim_due(NOW + 1, owner="replica-b", lease=30) == []  # not even its own
    assert await r.a.claim_due(NOW + 1, owner="replica-c", lease=30) == []  # all held


async def test_g07_an_expired_lease_is_claimed_by_another_replica(r: Replicas) -> None:
    ids = await _seed(r.a, 3)
    await r.a.claim_due(NOW, owner="crashed", lease=30)
    assert await r.b.claim_due(NOW + 29, owner="replica-b", lease=30) == []
    taken = await r.b.claim_due(NOW + 30, owner="replica-b", lease=30)
    assert [g.grant_id for g in taken] == ids
    assert {(g.claimed_by, g.claim_until) for g in taken} == {("replica-b", NOW + 60)}


async def test_g07_rotate_set_status_and_release_clear_the_claim(r: Replicas) -> None:
    ids = await _seed(r.a, 3)
    await r.a.claim_due(NOW, owner="replica-a", lease=300)
    await r.a.rotate(
        ids[0], make_tokens("v2", expires_at=NOW + 50, received_at=NOW), expected_version=1
    )
    await r.a.set_status(ids[1], GrantStatus.ACTIVE, reason=None)
    await r.b.release_claim(ids[2], owner="somebody-else")  # not theirs: nothing happens
    assert await r.b.claim_due(NOW, owner="replica-b", lease=30) != []
    meta = {g.grant_id: g for g in await r.b.list_metadata()}
    assert meta[ids[0]].claimed_by == meta[ids[1]].claimed_by == "replica-b"
    assert meta[ids[2]].claimed_by == "replica-a"
    await r.a.release_claim(ids[2], owner="replica-a")
    assert [g.grant_id for g in await r.b.claim_due(NOW, owner="replica-c", lease=30)] == [ids[2]]


async def test_g07_concurrent_claims_never_hand_a_grant_out_twice(r: Replicas) -> None:
    ids = await _seed(r.a, 120, first_expiry=NOW - 100)
    got: list[tuple[str, str]] = []

    async def worker(store: Any, owner: str) -> None:
        while batch := await store.claim_due(NOW, owner=owner, lease=300, limit=7):
            got.extend((g.grant_id, owner) for g in batch)
            await asyncio.sleep(0)

    await asyncio.gather(
        *(worker(r.a, f"a{i}") for i in range(4)), *(worker(r.b, f"b{i}") for i in range(4))
    )
    claimed = [gid for gid, _ in got]
    assert sorted(claimed) == ids, "a grant was claimed twice, or one was never claimed"
    final = {g.grant_id: g.claimed_by for g in await r.a.list_metadata()}
    assert final == {gid: owner for gid, owner in got}


# --- what the SQL stores open and seal ----------------------------------------------------------


async def test_rotate_opens_only_what_it_was_not_given(r: Replicas) -> None:
    if r.kind == "memory":
        pytest.skip("the memory store seals nothing")
    await r.a.create(make_grant("g-1"))
    before = r.sealer.opens
    full = make_tokens("v2", refresh="RT-v2", id_claims={"sub": "user-7", "acr": "2"})
    rotated = await r.a.rotate("g-1", full, expected_version=1)
    assert r.sealer.opens == before, "rotate opened tokens it had just sealed"
    assert rotated == await r.b.get("g-1")
    before = r.sealer.opens
    kept = await r.a.rotate("g-1", make_tokens("v3"), expected_version=2)
    assert r.sealer.opens == before + 2  # the kept refresh token and claims; not the new AT
    assert (kept.access_token, kept.refresh_token) == ("AT-v3", "RT-v2")
    assert dict(kept.id_claims) == {"sub": "user-7", "acr": "2"}


async def test_sqlite_makes_no_hsm_call_under_the_write_lock(r: Replicas) -> None:
    if r.kind != "sqlite":
        pytest.skip("SQLite's write lock")
    r.sealer.db = r.db
    await r.a.create(make_grant("g-1"))
    await r.a.rotate("g-1", make_tokens("v2", refresh="RT-v2"), expected_version=1)
    await r.a.rotate("g-1", make_tokens("v3"), expected_version=2)
    await r.a.set_status("g-1", GrantStatus.REVOKED, reason="revoked_by_operator")
    assert r.sealer.seals > 0 and r.sealer.opens > 0
    assert r.sealer.under_lock == []


async def test_sqlite_open_gives_older_grants_a_due_time(tmp_path: Path) -> None:
    path = str(tmp_path / "grants.db")
    clock = FakeClock(NOW)
    store = await SqliteGrantStore.connect(path, SoftSealer(), clock, due_rule=LeadRule())
    await store.create(make_grant("g-1", access_expires_at=NOW + 50))
    await store.close()
    with sqlite3.connect(path) as conn:  # as a grant stored before schema 7 looks
        conn.execute("UPDATE grants SET refresh_due_at = NULL")
    store = await SqliteGrantStore.connect(path, SoftSealer(), clock, due_rule=LeadRule())
    try:
        assert [(g.grant_id, g.refresh_due_at) for g in await store.due(NOW)] == [
            ("g-1", NOW + 50 - LEAD)
        ]
    finally:
        await store.close()


@pytest.fixture
def r(replicas: Replicas) -> Replicas:
    return replicas
