"""ES256 signing benchmark: raw C_Sign vs the broker's JWS path vs jwcrypto in memory.

One run, one temporary SoftHSM2 token (never the system one), the same key for both HSM modes:

- ``raw``: python-pkcs11 ``key.sign(digest, mechanism=CKM_ECDSA)`` over a precomputed SHA-256
  digest, serialised by a lock as the library requires (see broker/keys/pkcs11/lib.py);
- ``broker``: ``broker.jose.sign_compact`` through ``Pkcs11Signer`` (JSON, base64url, SHA-256,
  lock, recovery wrapper, ``keys.sign`` span with the no-op tracer);
- ``broker async``: the served path, ``broker.jose.sign_compact_async`` through the
  ``MeteredSigner`` of ``broker serve`` around a ``Pkcs11Signer`` of a store with an
  ``HsmHealth`` (per-operation timeout): one hop from the event loop into the bounded worker,
  which does the lock wait, ``C_Sign`` and the metrics; "threads" = concurrent tasks on one loop;
- ``jwcrypto``: jwcrypto ``JWS`` ES256 with an in-memory key.

Modes are interleaved round by round so machine noise hits all of them alike. 1 and 2 threads.
Targets: broker (sync and async) >= 0.85x raw at 1 thread and >= 0.80x at 2 threads, broker
sync >= 1.0x jwcrypto. The verdict is on the median over rounds of the per-round throughput
ratio (both modes of a round ran within a few hundred milliseconds of each other): on a shared
box a burst of someone else's work inside one mode's round moves the pooled ops/s ratio, which
is reported too, by more than the effect measured.

    .venv/bin/python bench/sign.py [--rounds 20] [--ops 400] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from common import cpu_model

ROOT = Path(__file__).resolve().parent.parent
TARGET_RAW = {1: 0.85, 2: 0.80}
TARGET_JWCRYPTO = 1.0
CLAIMS = {
    "iss": "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY",
    "sub": "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY",
    "aud": "https://verifier.dome-marketplace.eu",
    "jti": "2f4c0b7e-6a53-4f7e-9d3b-4c3c8b0a1e77",
    "exp": 1_800_000_300,
    "iat": 1_800_000_000,
}


def _make_token(workdir: Path) -> tuple[str, str, str]:
    """Write a private softhsm2.conf, point SOFTHSM2_CONF at it, initialise a token."""
    tokens = workdir / "tokens"
    tokens.mkdir()
    conf = workdir / "softhsm2.conf"
    template = (ROOT / "softhsm" / "softhsm2.conf.in").read_text()
    conf.write_text(template.replace("@TOKENDIR@", str(tokens)))
    os.environ["SOFTHSM2_CONF"] = str(conf)  # before the module is loaded
    from broker.keys.inittoken import init_token
    from broker.keys.pkcs11.lib import default_module_path

    module = default_module_path()
    pin = secrets.token_hex(8)
    init_token(module, "bench", secrets.token_hex(8), pin)
    return module, "bench", pin


def _run_threads(op: Callable[[], object], ops: int, threads: int) -> tuple[float, list[int]]:
    """Run ``ops`` calls split over ``threads``; return wall seconds and per-call latencies (ns)."""
    latencies: list[list[int]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(n: int) -> None:
        own = latencies[n]
        barrier.wait()
        for _ in range(ops // threads):
            start = time.perf_counter_ns()
            op()
            own.append(time.perf_counter_ns() - start)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - start, [x for chunk in latencies for x in chunk]


def _run_tasks(
    loop: asyncio.AbstractEventLoop, op: Callable[[], Any], ops: int, tasks: int
) -> tuple[float, list[int]]:
    """``ops`` awaits of ``op()`` split over ``tasks`` concurrent tasks on ``loop``."""

    async def work(own: list[int]) -> None:
        for _ in range(ops // tasks):
            start = time.perf_counter_ns()
            await op()
            own.append(time.perf_counter_ns() - start)

    async def all_tasks() -> tuple[float, list[int]]:
        latencies: list[list[int]] = [[] for _ in range(tasks)]
        start = time.perf_counter()
        await asyncio.gather(*(work(own) for own in latencies))
        return time.perf_counter() - start, [x for chunk in latencies for x in chunk]

    return loop.run_until_complete(all_tasks())


def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6  # ms


def _machine() -> dict[str, str]:
    cpu = cpu_model()
    try:
        softhsm = subprocess.run(
            ["softhsm2-util", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        softhsm = "unknown"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "softhsm": softhsm,
        "python-pkcs11": metadata.version("python-pkcs11"),
        "jwcrypto": metadata.version("jwcrypto"),
        "cryptography": metadata.version("cryptography"),
        "kernel": platform.release(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ops", type=int, default=400, help="signatures per mode per round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="broker-bench-") as tmp:
        module, label, pin = _make_token(Path(tmp))
        from jwcrypto import jwk, jws
        from opentelemetry.sdk.metrics import MeterProvider
        from pkcs11 import Mechanism, ObjectClass

        from broker.clock import SystemClock
        from broker.jose import sign_compact, sign_compact_async
        from broker.keys.health import HsmHealth
        from broker.keys.pkcs11 import Pkcs11KeyStore
        from broker.telemetry.metrics import BrokerMetrics
        from broker.telemetry.signer import MeteredSigner

        load_before = os.getloadavg()
        loop = asyncio.new_event_loop()
        meters = MeterProvider()
        with (
            Pkcs11KeyStore(module, label, pin) as store,
            Pkcs11KeyStore(module, label, pin, health=HsmHealth()) as served,
        ):
            store.generate("bench-key", b"\xbe")
            signer = store.signer("bench-key")
            served_signer = MeteredSigner(
                served.signer("bench-key"), BrokerMetrics(meters.get_meter("bench")), SystemClock()
            )
            lib_lock = store.session.lock
            raw_session = store.session.lib.lib.get_token(
                token_label=label
            ).open()  # already logged in
            raw_key = raw_session.get_key(ObjectClass.PRIVATE_KEY, label="bench-key")
            digest = hashlib.sha256(b"bench").digest()

            def raw() -> object:
                with lib_lock:
                    return raw_key.sign(digest, mechanism=Mechanism.ECDSA)

            def broker() -> object:
                return sign_compact(signer, CLAIMS)

            memory_key = jwk.JWK.generate(kty="EC", crv="P-256")
            payload = json.dumps(CLAIMS, separators=(",", ":")).encode()
            protected = json.dumps({"alg": "ES256", "typ": "JWT", "kid": signer.kid})

            def broker_async() -> Any:
                return sign_compact_async(served_signer, CLAIMS)

            def jwcrypto() -> object:
                token = jws.JWS(payload)
                token.add_signature(memory_key, alg="ES256", protected=protected)
                return token.serialize(compact=True)

            modes: dict[str, Callable[[], object]] = {
                "raw C_Sign": raw,
                "broker JWS": broker,
                "broker async": broker_async,
                "jwcrypto": jwcrypto,
            }
            for name, op in modes.items():  # warm up
                if name == "broker async":
                    _run_tasks(loop, op, 50, 1)
                else:
                    for _ in range(50):
                        op()
            results: dict[tuple[str, int], tuple[float, list[int]]] = {}
            per_round: dict[tuple[str, int], list[float]] = {}  # ops/s of each round
            for threads in (1, 2):
                for _ in range(args.rounds):
                    for name, op in modes.items():
                        if name == "broker async":
                            seconds, lat = _run_tasks(loop, op, args.ops, threads)
                        else:
                            seconds, lat = _run_threads(op, args.ops, threads)
                        total, all_lat = results.get((name, threads), (0.0, []))
                        per_round.setdefault((name, threads), []).append(len(lat) / seconds)
                        results[(name, threads)] = (total + seconds, all_lat + lat)
            raw_session.close()
        loop.close()
        meters.shutdown()
        load_after = os.getloadavg()

    rows = []
    rates: dict[tuple[str, int], float] = {}
    p50s: dict[tuple[str, int], float] = {}
    for (name, threads), (seconds, lat) in results.items():
        rate = len(lat) / seconds
        rates[(name, threads)] = rate
        p50s[(name, threads)] = _pct(lat, 0.50)
        rows.append((name, threads, rate, _pct(lat, 0.50), _pct(lat, 0.99), len(lat)))

    lines = [
        f"# ES256 signing benchmark ({_machine()['date']})",
        "",
        f"Command: `.venv/bin/python bench/sign.py --rounds {args.rounds} --ops {args.ops}`",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in _machine().items()],
        f"| load average before / after | {load_before[0]:.2f} / {load_after[0]:.2f} |",
        "",
        f"{args.rounds} interleaved rounds x {args.ops} signatures per mode and thread count.",
        "",
        "| mode | threads | ops/s | p50 ms | p99 ms | n |",
        "|---|---|---|---|---|---|",
        *[
            f"| {n} | {t} | {r:.0f} | {p50:.3f} | {p99:.3f} | {c} |"
            for n, t, r, p50, p99, c in rows
        ],
        "",
        "Ratios are of throughput (ops/s): the median over the rounds of each round's ratio (the",
        "verdict), and the ratio of the totals (pooled); the p50 column gives the ratio from median",
        "latency (other users' test suites were running: see load average).",
        "",
        "| ratio | threads | median of per-round ops/s ratios | pooled ops/s | p50 ratio "
        "| target | met (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for threads in (1, 2):
        for mine, other, target in (
            ("broker JWS", "raw C_Sign", TARGET_RAW[threads]),
            ("broker async", "raw C_Sign", TARGET_RAW[threads]),
            ("broker JWS", "jwcrypto", TARGET_JWCRYPTO),
        ):
            pooled = rates[(mine, threads)] / rates[(other, threads)]
            ratio = statistics.median(
                a / b
                for a, b in zip(
                    per_round[(mine, threads)], per_round[(other, threads)], strict=True
                )
            )
            p50_ratio = p50s[(other, threads)] / p50s[(mine, threads)]
            met = ratio >= target
            verdicts.append(met)
            lines.append(
                f"| {mine} / {other} | {threads} | {ratio:.2f}x | {pooled:.2f}x "
                f"| {p50_ratio:.2f}x | >= {target:.2f}x | "
                + ("yes" if met else f"NO (short by {(target - ratio) / target:.0%})")
                + " |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"sign-{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d-%H%M')}.md"
    out.write_text(text)
    print(f"written to {out}")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
