"""GetAccessToken latency against the number of stored grants, and memory per grant.

In one run, for each N in (100, 100_000): a SQLite grant store holding N grants (tokens sealed
with AES-256-GCM), a TokenBroker over it (the refresher is never called: every token is fresh),
then
- cold: the first GetAccessToken of up to 2,000 random grants (a store read + unseal each),
- warm: 5 x 20,000 GetAccessToken of random grants, all cached (the hot path of the gRPC
  servicer), reporting the median of the 5 p50s and p99s,
and the traced memory growth (tracemalloc) per grant entering the cache. The domain call is measured in-process: the gRPC layer's cost does not
depend on N and is measured by bench/serve.py.

Usage: .venv/bin/python bench/grants.py [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cpu_model, percentile  # noqa: E402

from broker.clock import SystemClock  # noqa: E402
from broker.keys.soft import SoftSealer  # noqa: E402
from broker.oauth.types import TokenSet  # noqa: E402
from broker.tokens.broker import TokenBroker  # noqa: E402
from broker.tokens.model import Grant, GrantStatus  # noqa: E402
from broker.tokens.settings import RefreshPolicy  # noqa: E402
from broker.tokens.stores.sqlite import SqliteGrantStore  # noqa: E402

SIZES = (100, 100_000)
COLD_SAMPLES = 2_000
WARM_CALLS = 20_000
REPEATS = 5


class NeverRefresher:
    async def refresh(self, refresh_token: str, *, subject: str) -> TokenSet:
        raise AssertionError("the bench keeps every token fresh")


async def populate(store: SqliteGrantStore, n: int, now: float) -> list[str]:
    ids = [f"g{i:07d}" for i in range(n)]
    for gid in ids:
        await store.create(
            Grant(
                grant_id=gid,
                label="bench",
                issuer="https://as.example",
                client_id="did:key:zDnbench",
                subject="did:key:zDnsubject",
                scope="openid learcredential",
                status=GrantStatus.ACTIVE,
                access_token="at-" + gid + "x" * 900,  # about the size of a DOME access token
                access_expires_at=now + 86_400,
                refresh_token="rt-" + gid + "y" * 40,
                created_at=now,
                updated_at=now,
            )
        )
    return ids


async def measure(n: int, workdir: Path) -> dict[str, float]:
    clock = SystemClock()
    store = await SqliteGrantStore.connect(str(workdir / f"grants-{n}.db"), SoftSealer(), clock)
    t0 = time.perf_counter()
    ids = await populate(store, n, clock.now())
    populate_s = time.perf_counter() - t0
    broker = TokenBroker(
        store, NeverRefresher(), clock, refresh=RefreshPolicy(threshold=300, min_serve_ttl=10)
    )
    rng = random.Random(7)
    cold: list[float] = []
    half = n // 2
    for gid in rng.sample(ids[:half], min(COLD_SAMPLES, half)):
        t = time.perf_counter()
        await broker.get_access_token(gid)
        cold.append(time.perf_counter() - t)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for gid in ids[half:]:  # never read before: each one now enters the cache
        await broker.get_access_token(gid)
    per_grant = (tracemalloc.get_traced_memory()[0] - before) / (n - half)
    for gid in ids[:half]:  # every grant cached
        await broker.get_access_token(gid)
    tracemalloc.stop()
    for _ in range(2_000):  # warm-up, not measured
        await broker.get_access_token(ids[rng.randrange(n)])
    p50s: list[float] = []
    p99s: list[float] = []
    for _ in range(REPEATS):  # the machine is shared: report the median of the repeats
        warm: list[float] = []
        for _ in range(WARM_CALLS):
            gid = ids[rng.randrange(n)]
            t = time.perf_counter()
            await broker.get_access_token(gid)
            warm.append(time.perf_counter() - t)
        p50s.append(percentile(warm, 50))
        p99s.append(percentile(warm, 99))
    await store.close()
    return {
        "n": n,
        "populate_s": populate_s,
        "cold_p50_ms": percentile(cold, 50) * 1e3,
        "cold_p99_ms": percentile(cold, 99) * 1e3,
        "warm_p50_us": statistics.median(p50s) * 1e6,
        "warm_p99_us": statistics.median(p99s) * 1e6,
        "bytes_per_cached_grant": per_grant,
    }


async def main_async(out: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-grants-") as tmp:
        rows = [await measure(n, Path(tmp)) for n in SIZES]
    small, large = rows
    lines = [
        f"# GetAccessToken vs stored grants ({dt.date.today().isoformat()})",
        "",
        f"Machine: {platform.node()}, {cpu_model()} x {os.cpu_count()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}",
        "Store: SQLite (WAL, synchronous=FULL), tokens sealed with AES-256-GCM (soft sealer).",
        "",
        "| grants | cold p50 | cold p99 | cached p50 | cached p99 | traced bytes per cached grant |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['n']):,} | {r['cold_p50_ms']:.2f} ms | {r['cold_p99_ms']:.2f} ms | "
            f"{r['warm_p50_us']:.1f} us | {r['warm_p99_us']:.1f} us | "
            f"{r['bytes_per_cached_grant']:.0f} |"
        )
    lines += [
        "",
        f"Cached p99 ratio 100,000 / 100 grants: "
        f"{large['warm_p99_us'] / small['warm_p99_us']:.2f}x; "
        f"cold p99 ratio: {large['cold_p99_ms'] / small['cold_p99_ms']:.2f}x.",
        f"(Populating 100,000 grants took {large['populate_s']:.0f} s: one durable transaction each.)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(main_async(args.out))


if __name__ == "__main__":
    main()
