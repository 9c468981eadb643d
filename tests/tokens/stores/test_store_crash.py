"""Crash safety of the stores (G01/G03 at the store level).

A child process rotates grants in a loop (mark_refresh_started, then rotate with a new access and
refresh token that both carry the new version) and prints each version once ``rotate`` returned.
The test kills it with SIGKILL at random moments, many times, and after each kill checks:
the database is intact (SQLite: ``PRAGMA integrity_check``), every grant holds exactly one
consistent (version, access token, refresh token) triple that decrypts, and no rotation the
child saw committed is lost. The sealing key reaches the child on stdin, never in argv.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.keys.soft import SoftSealer
from broker.tokens.stores.base import GrantStore
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import (
    HANG_GUARD_S,
    drop_pg_schema,
    make_grant,
    pg_schema_name,
    postgres_dsn_or_skip,
)

KILLS = 30
GRANTS = ("g-0", "g-1", "g-2")

_ROTATOR = """
import asyncio, sys, time
from broker.clock import SystemClock
from broker.keys.soft import SoftSealer
from broker.oauth.types import TokenSet

async def main() -> None:
    kind, where, schema = sys.argv[1], sys.argv[2], sys.argv[3]
    grants = sys.argv[4].split(",")
    sealer = SoftSealer(bytes.fromhex(sys.stdin.readline().strip()))
    if kind == "sqlite":
        from broker.tokens.stores.sqlite import SqliteGrantStore
        store = await SqliteGrantStore.connect(where, sealer, SystemClock())
    else:
        from broker.tokens.stores.postgres import PostgresGrantStore
        store = await PostgresGrantStore.connect(where, sealer, SystemClock(), schema=schema)
    while True:
        for gid in grants:
            grant = await store.get(gid)
            await store.mark_refresh_started(gid, time.time())
            v = grant.version + 1
            tokens = TokenSet(
                access_token=f"AT-{gid}-{v}", token_type="Bearer", expires_at=time.time() + 300,
                received_at=time.time(), scope="openid", refresh_token=f"RT-{gid}-{v}",
            )
            await store.rotate(gid, tokens, expected_version=grant.version)
            sys.stdout.write(f"{gid} {v}\\n")
            sys.stdout.flush()

asyncio.run(main())
"""


async def _run_and_kill(
    kind: str, where: str, schema: str, key: bytes, rng: random.Random
) -> dict[str, int]:
    """One child life: start, let it commit at least once, SIGKILL at a random moment.

    Returns the highest version per grant the child reported as committed."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ROTATOR,
        kind,
        where,
        schema,
        ",".join(GRANTS),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(key.hex().encode() + b"\n")
    await child.stdin.drain()
    try:
        first = await asyncio.wait_for(child.stdout.readline(), HANG_GUARD_S)
        assert first, "the rotator died before its first commit"
        await asyncio.sleep(rng.uniform(0.0, 0.08))  # a random moment, not an assertion
        os.kill(child.pid, signal.SIGKILL)
        rest = await child.stdout.read()
        assert await child.wait() == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    reported: dict[str, int] = {}
    # Only complete lines count: the kill may cut the last report short.
    for line in (first + rest).decode().split("\n")[:-1]:
        gid, version = line.split()
        reported[gid] = max(reported.get(gid, 0), int(version))
    return reported


async def _check(store: GrantStore, reported: dict[str, int]) -> int:
    """Every grant decrypts to one consistent version; returns how many reported commits are
    missing from the store."""
    lost = 0
    for gid in GRANTS:
        grant = await store.get(gid)
        assert grant.access_token == f"AT-{gid}-{grant.version}"
        expected_rt = f"RT-{gid}-{grant.version}" if grant.version > 1 else f"RT-{gid}-v1-plaintext"
        assert grant.refresh_token == expected_rt
        if reported.get(gid, 0) > grant.version:
            lost += 1
    return lost


async def _torture(kind: str, where: str, schema: str, open_store: Any) -> tuple[int, int, int]:
    key = os.urandom(32)
    rng = random.Random()
    store = await open_store(SoftSealer(key))
    for gid in GRANTS:
        await store.create(make_grant(gid, access_token=f"AT-{gid}-1"))
    await store.close()
    kills = lost = 0
    total_reported: dict[str, int] = {}
    for _ in range(KILLS):
        reported = await _run_and_kill(kind, where, schema, key, rng)
        kills += 1
        for gid, v in reported.items():
            total_reported[gid] = max(total_reported.get(gid, 0), v)
        if kind == "sqlite":
            with sqlite3.connect(where) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            conn.close()
        store = await open_store(SoftSealer(key))
        try:
            lost += await _check(store, reported)
        finally:
            await store.close()
    rotations = sum(v - 1 for v in total_reported.values())
    return kills, lost, rotations


@pytest.mark.slow
async def test_g01_g03_sqlite_survives_kill_9_during_rotations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "grants.db")

    async def open_store(sealer: SoftSealer) -> SqliteGrantStore:
        return await SqliteGrantStore.connect(path, sealer, FakeClock())

    kills, lost, rotations = await _torture("sqlite", path, "-", open_store)
    with capsys.disabled():
        print(f"\n[G01/G03 sqlite] kills={kills} lost={lost} committed_rotations={rotations}")
    assert kills == KILLS
    assert lost == 0


@pytest.mark.slow
@pytest.mark.postgres
async def test_g01_postgres_survives_kill_9_during_rotations(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = postgres_dsn_or_skip()
    schema = pg_schema_name()

    async def open_store(sealer: SoftSealer) -> PostgresGrantStore:
        return await PostgresGrantStore.connect(dsn, sealer, FakeClock(), schema=schema)

    try:
        kills, lost, rotations = await _torture("postgres", dsn, schema, open_store)
    finally:
        drop_pg_schema(dsn, schema)
    with capsys.disabled():
        print(f"\n[G01 postgres] kills={kills} lost={lost} committed_rotations={rotations}")
    assert kills == KILLS
    assert lost == 0
