"""The text of bench/storm.py's result: rates, ratio, per-refresh latencies, the checks."""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

from common import percentile
from refresh import machine_info


def latency_cells(values: list[float]) -> str:
    if not values:
        return "- | - | -"
    return (
        f"{percentile(values, 50):.2f} | {percentile(values, 99):.2f} | "
        f"{statistics.mean(values):.2f}"
    )


def report(r: dict[str, Any]) -> str:
    n = r["n"]
    broker_rate = n / r["wall"] if r["wall"] > 0 else 0.0
    bare_rate = n / r["bare_wall"]
    ratio = broker_rate / bare_rate
    verdict = "meets" if ratio >= 0.8 and r["lost"] == 0 else "MISSES"
    one_each = r["per_grant"] == {1: n}
    passes = r["passes"]
    broker_ms = [x * 1000 for x in r["latencies"]]
    bare_ms = [x * 1000 for x in r["bare_latencies"]]
    lines = [
        f"# Refresh storm: {n:,} grants due at once ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        "`bench/storm.py`: the broker's background pass (TokenBroker wired as `broker serve`",
        "wires it: SQLite store with tokens sealed in SoftHSM, HSM-signed client assertion per",
        "request, id_token validated, rotation stored before the next) refreshing every grant,",
        "against a bare `httpx.AsyncClient` posting refresh_token grants with assertions signed",
        f"beforehand, at the same concurrency ({r['concurrency']}), both against the oidc-provider",
        "8.8.1 peer over TLS on loopback, each grant's refresh token minted by the peer.",
        "",
        "| path | grants | wall s | refreshes/s | per refresh p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|---|---|",
        f"| broker | {n:,} | {r['wall']:.1f} | {broker_rate:.1f} | {latency_cells(broker_ms)} |",
        f"| bare | {n:,} | {r['bare_wall']:.1f} | {bare_rate:.1f} | {latency_cells(bare_ms)} |",
        "",
        "Per refresh: broker, one refresh path run (store read and unseal, durable intent,",
        "assertion signed in the HSM, POST, validation, sealing, durable rotation); bare, one POST",
        "and its JSON. At a fixed concurrency the rate is concurrency / latency.",
        f"CPU of this process per refresh (process time / grants, every thread): broker "
        f"**{r['cpu'] / n * 1000:.2f} ms**, bare **{r['bare_cpu'] / n * 1000:.2f} ms** "
        "(the peer, node, runs in its own process).",
        "",
        f"Rate ratio broker/bare: **{ratio:.2f}x** (target >= 0.8x, 0 lost: {verdict}).",
        f"Lost (not ACTIVE at version 2 with a new access token and a rotated refresh token in "
        f"the store): **{r['lost']}**.",
        f"Token requests the peer received during the storm: {r['requests']:,}; per grant: "
        f"{r['per_grant']} (exactly one each: {'yes' if one_each else 'NO'}).",
        f"Refresh outcomes: {r['outcomes']}.",
        f"Background passes that claimed grants: {len(passes)} ({passes}); the first pass woke "
        f"{r['first_pass_after_start']:.1f} s after start (the interval, {r['interval']:g} s: the "
        "broker's wall time starts at that pass's claim).",
        f"Bare: statuses {r['bare_statuses']}, requests per token {r['bare_per_grant']}, in two "
        f"halves before and after the storm: {r['bare_halves'][0]:.1f} s + "
        f"{r['bare_halves'][1]:.1f} s.",
        f"Load average (1/5/15 min): {r['load_start']} at start, {r['load_end']} at end.",
        f"(Minting {2 * n:,} grants at the peer took {r['mint_s']:.1f} s; bulk-loading {n:,} "
        f"HSM-sealed grants {r['load_s']:.1f} s.)",
        "",
        "## Run",
        "",
        f"- grants: {n}",
        f"- background interval: {r['interval']:g} s, concurrency: {r['concurrency']}",
        f"- store file in: {r['store_dir']}",
        f"- mechanism: {r['mechanism']}",
        *(f"- {k}: {v}" for k, v in machine_info().items()),
        "",
    ]
    return "\n".join(lines)
