"""One idle status-watcher pass (broker.tokens.status_watch) at 100,000 grants.

A replica asks the store every ``[tokens] status_poll_interval`` (2 s) which grants changed
status since its cursor. This measures what that costs when nothing changed, with 100,000
grants stored of which 1,000 were revoked earlier (so the index is not empty):

- SQLite: the store filled as ``bench/grants.py`` fills it (``populate``; sealed with a soft
  sealer: the poll reads no token column, so the sealer does not matter here);
- PostgreSQL (127.0.0.1:5432/test, a schema of its own, dropped afterwards): 100,000 rows
  inserted by one INSERT ... SELECT (clear columns as the store writes them, dummy sealed bytes).

For each: the query plan, the wall time (p50, p99) and the process CPU of ``ROUNDS`` idle passes
through ``TokenBroker.read_status_changes`` (the store call, its thread or network hop, the
cursor update), and the first pass's time (it starts at cursor 0: reads the 1,000 changed rows).

Usage: .venv/bin/python bench/status_poll.py [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import secrets
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from common import cpu_model, load_average, percentile  # noqa: E402
from grants import POLICY, NeverRefresher, populate  # noqa: E402
from psycopg import sql  # noqa: E402

from broker.clock import SystemClock  # noqa: E402
from broker.keys.soft import SoftSealer  # noqa: E402
from broker.tokens.broker import TokenBroker  # noqa: E402
from broker.tokens.model import GrantStatus  # noqa: E402
from broker.tokens.stores.base import GrantStore  # noqa: E402
from broker.tokens.stores.postgres import PostgresGrantStore  # noqa: E402
from broker.tokens.stores.sqlite import SqliteGrantStore  # noqa: E402

N = 100_000
REVOKED = 1_000
ROUNDS = 500
PG_DSN = os.environ.get("BROKER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def passes(broker: TokenBroker) -> dict[str, float]:
    t = time.perf_counter()
    await broker.read_status_changes()  # cursor 0: every change so far
    first = time.perf_counter() - t
    walls = []
    cpu0 = time.process_time()
    for _ in range(ROUNDS):
        t = time.perf_counter()
        assert await broker.read_status_changes() == 0
        walls.append(time.perf_counter() - t)
    cpu = (time.process_time() - cpu0) / ROUNDS
    return {
        "first_ms": first * 1e3,
        "p50_us": percentile(walls, 50) * 1e6,
        "p99_us": percentile(walls, 99) * 1e6,
        "cpu_us": cpu * 1e6,
    }


async def revoke_some(store: GrantStore, ids: list[str]) -> None:
    for gid in ids[:: len(ids) // REVOKED][:REVOKED]:
        await store.set_status(gid, GrantStatus.REVOKED, reason="revoked")


async def sqlite_case(workdir: Path) -> tuple[dict[str, float], str]:
    clock, sealer = SystemClock(), SoftSealer()
    path = workdir / "grants.db"
    store = await SqliteGrantStore.connect(str(path), sealer, clock, due_rule=POLICY.schedule())
    try:
        ids = await asyncio.to_thread(populate, path, sealer, N, clock.now())
        await revoke_some(store, ids)
        with sqlite3.connect(path) as conn:
            plan = " / ".join(
                str(r[-1])
                for r in conn.execute(
                    "EXPLAIN QUERY PLAN SELECT grant_id, status, status_seq FROM grants "
                    "WHERE status_seq > ?",
                    (REVOKED,),
                )
            )
        broker = TokenBroker(store, NeverRefresher(), clock, refresh=POLICY)
        return await passes(broker), plan
    finally:
        await store.close()


async def postgres_case() -> tuple[dict[str, float], str]:
    clock = SystemClock()
    schema = f"bench_status_{secrets.token_hex(4)}"
    store = await PostgresGrantStore.connect(PG_DSN, SoftSealer(), clock, schema=schema)
    table = sql.SQL("{}.grants").format(sql.Identifier(schema))
    try:
        now = clock.now()
        async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (grant_id, label, issuer, client_id, subject, scope, status, "
                    "access_token, access_expires_at, refresh_token, id_claims, created_at, "
                    "updated_at, version, seal_key, refresh_due_at) "
                    "SELECT 'g' || lpad(i::text, 7, '0'), 'bench', 'https://as.example', "
                    "'did:key:zDnbench', 'did:key:zDnsubject', 'openid', 'active', "
                    "'\\x00'::bytea, %s, '\\x00'::bytea, '\\x00'::bytea, %s, %s, 1, 'soft', %s "
                    "FROM generate_series(0, %s) AS i"
                ).format(table),
                (now + 86_400, now, now, now + 43_200, N - 1),
            )
            # The rows hold dummy sealed bytes: revoke with the UPDATE set_status runs (the
            # trigger numbers it), without set_status opening the returned row.
            await conn.execute(
                sql.SQL(
                    "UPDATE {} SET status = 'revoked' "
                    "WHERE grant_id IN (SELECT 'g' || lpad(i::text, 7, '0') "
                    "FROM generate_series(0, %s, %s) AS i)"
                ).format(table),
                (N - 1, N // REVOKED),
            )
            await conn.execute(sql.SQL("ANALYZE {}").format(table))
        async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
            cur = await conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
            xmin = (await cur.fetchone() or ("0",))[0]
            cur = await conn.execute(  # the store's query, at an idle pass's cursor
                sql.SQL(
                    "EXPLAIN SELECT NULL, grant_id, status FROM {} "
                    "WHERE status_xid >= %s::text::xid8"
                ).format(table),
                (xmin,),
            )
            plan = " / ".join(str(r[0]).strip() for r in await cur.fetchall())
        broker = TokenBroker(store, NeverRefresher(), clock, refresh=POLICY)
        return await passes(broker), plan
    finally:
        await store.close()
        async with await psycopg.AsyncConnection.connect(PG_DSN, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )


async def main_async(out: Path | None) -> None:
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        lite, lite_plan = await sqlite_case(Path(tmp))
    pg, pg_plan = await postgres_case()
    lines = [
        f"# One idle status-watcher pass at {N:,} grants "
        f"({dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')} UTC)",
        "",
        f"Machine: {platform.node()}, {cpu_model()} x {os.cpu_count()}, Python "
        f"{platform.python_version()}, load {load_before} at start, {load_average()} at end "
        "(a shared box).",
        f"{N:,} grants stored, {REVOKED:,} of them revoked before the watcher starts; "
        f"{ROUNDS} idle passes (TokenBroker.read_status_changes, nothing changed).",
        "",
        "| store | idle pass p50 | idle pass p99 | process CPU per idle pass "
        "| first pass (cursor 0) |",
        "|---|---|---|---|---|",
    ]
    for name, r in (("SQLite", lite), ("PostgreSQL (localhost)", pg)):
        lines.append(
            f"| {name} | {r['p50_us']:.0f} us | {r['p99_us']:.0f} us | {r['cpu_us']:.0f} us "
            f"| {r['first_ms']:.1f} ms |"
        )
    lines += [
        "",
        f"At the default 2 s interval that is under {max(lite['cpu_us'], pg['cpu_us']) / 2e4:.3f} "
        "% of one core per replica.",
        "",
        f"SQLite plan: {lite_plan}",
        "",
        f"PostgreSQL plan: {pg_plan}",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    asyncio.run(main_async(parser.parse_args().out))


if __name__ == "__main__":
    main()
