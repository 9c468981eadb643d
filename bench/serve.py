"""Serving overhead: the broker's cached GetAccessToken vs a bare grpcio mTLS unary echo.

Both servers run in this process on loopback with the same mTLS credentials; the callers run
in ANOTHER process (this script re-invoked with ``client``) with 1 and 16 concurrent callers on
one channel, sending the same request bytes to both and getting equally sized answers back.
The broker path includes identity, policy, validation, the tracing interceptor (no-op tracer
provider, as in production without an exporter) and proto conversion; its TokenBroker is a
fake that returns a cached token. Runs are interleaved (echo, broker, echo, broker ...) and the
median per configuration is reported.

    .venv/bin/python bench/serve.py [--duration 4] [--rounds 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # devtools/ is a top-level package of the checkout

import grpc  # noqa: E402
from common import cpu_model  # noqa: E402

from broker.errors import NotFound  # noqa: E402
from broker.server.app import start_server  # noqa: E402
from broker.server.gen.broker.v1 import broker_pb2 as pb  # noqa: E402
from broker.server.policy import PolicyHolder  # noqa: E402
from broker.tokens.model import Grant  # noqa: E402
from devtools.pki import Ca  # noqa: E402

ECHO_METHOD = "/bench.Echo/Echo"
BROKER_METHOD = "/broker.v1.TokenBroker/GetAccessToken"
CLIENT_ID = "spiffe://bench.example/caller"
GRANT_ID = "g-bench"
WARMUP_CALLS = 50


@dataclass(frozen=True)
class CachedToken:
    access_token: str = field(repr=False)
    expires_at: float
    scope: str
    subject: str
    grant_id: str
    token_type: str = "Bearer"  # noqa: S105


class CachedBroker:
    """A TokenBroker whose every answer is the same cached token."""

    def __init__(self) -> None:
        self._token = CachedToken("x" * 900, time.time() + 3600, "openid", "user-1", GRANT_ID)

    async def get_access_token(self, grant_id: str, *, min_ttl: float) -> CachedToken:
        return self._token

    async def watch(self, grant_id: str) -> AsyncIterator[CachedToken]:
        yield self._token

    async def get_grant(self, grant_id: str) -> Grant:
        raise NotImplementedError

    async def list_grants(self, label: str | None) -> list[Grant]:
        return []

    async def revoke_grant(self, grant_id: str) -> None:
        return None


class NoLogins:
    """The benchmark serves cached tokens only: every login call is refused."""

    async def start(self, *, label: str, owner: str) -> Any:
        raise NotFound("no logins in this benchmark")

    async def complete(
        self,
        *,
        code: str | None,
        state: str,
        iss: str | None,
        error: str | None = None,
        owner: str,
        authorize: Callable[[str], None],
    ) -> Any:
        raise NotFound("no logins in this benchmark")

    def get(self, login_id: str, *, owner: str) -> Any:
        raise NotFound("no logins in this benchmark")


def _request_bytes() -> bytes:
    return pb.GetAccessTokenRequest(grant_id=GRANT_ID).SerializeToString()


def _response_bytes() -> bytes:
    tok = CachedBroker()._token
    from broker.server import convert

    return pb.GetAccessTokenResponse(token=convert.access_token(tok)).SerializeToString()


# --- client process ---------------------------------------------------------------------------


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    d = Path(args.certs)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(d / "server-ca.pem").read_bytes(),
        private_key=(d / "client.key").read_bytes(),
        certificate_chain=(d / "client.pem").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", "broker.test")]
    request = _request_bytes()
    async with grpc.aio.secure_channel(args.target, creds, options=options) as channel:
        call = channel.unary_unary(args.method)
        for _ in range(WARMUP_CALLS):  # warm-up: handshake, code paths
            await call(request)
        latencies: list[float] = []
        stop_at = time.perf_counter() + args.duration

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await call(request)
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "calls": len(latencies),
        "total_calls": len(latencies) + WARMUP_CALLS,
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


# --- server process ---------------------------------------------------------------------------


async def _start_echo(certs: dict[str, bytes]) -> Any:
    response = _response_bytes()

    async def echo(request: bytes, context: Any) -> bytes:
        return response

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(certs["server.key"], certs["server.pem"])],
            root_certificates=certs["client-ca.pem"],
            require_client_auth=True,
        ),
    )
    await server.start()
    return server, port


def _machine() -> list[str]:
    cpu = cpu_model()
    import google.protobuf

    return [
        f"- host: {platform.node()} ({platform.system()} {platform.release()}, {platform.machine()})",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores",
        f"- Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"protobuf {google.protobuf.__version__}",
        "- load average (1/5/15 min) at report time: "
        + " / ".join(f"{x:.2f}" for x in os.getloadavg())
        + " (other work on the box adds noise; compare ratios, not absolutes)",
    ]


async def _main(args: argparse.Namespace) -> int:
    profiler = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        d = Path(tmp)
        client_ca, server_ca = Ca("bench-client-ca"), Ca("bench-server-ca")
        server = server_ca.issue(cn="broker.test", dns=("broker.test",), server=True)
        client = client_ca.issue(uris=(CLIENT_ID,))
        certs = {
            "client-ca.pem": client_ca.pem,
            "server-ca.pem": server_ca.pem,
            "server.pem": server.cert_pem,
            "server.key": server.key_pem,
            "client.pem": client.cert_pem,
            "client.key": client.key_pem,
        }
        for name, data in certs.items():
            (d / name).write_bytes(data)
        policy = d / "policy.toml"
        policy.write_text(
            f'[identities."{CLIENT_ID}"]\nmethods = ["GetAccessToken"]\ngrants = ["{GRANT_ID}"]\n'
        )
        echo_server, echo_port = await _start_echo(certs)
        broker = await start_server(
            broker=CachedBroker(),
            logins=NoLogins(),
            policy=PolicyHolder(policy),
            bind="127.0.0.1:0",
            server_cert_pem=server.cert_pem,
            server_key_pem=server.key_pem,
            client_ca_pem=client_ca.pem,
        )
        targets = {
            "echo": (f"127.0.0.1:{echo_port}", ECHO_METHOD),
            "broker": (f"127.0.0.1:{broker.port}", BROKER_METHOD),
        }
        results: dict[tuple[str, int], list[dict[str, Any]]] = {}
        try:
            for conc in (1, 16):
                for _ in range(args.rounds):
                    for name, (target, method) in targets.items():
                        cmd = [
                            sys.executable,
                            __file__,
                            "client",
                            "--target",
                            target,
                            "--method",
                            method,
                            "--concurrency",
                            str(conc),
                            "--duration",
                            str(args.duration),
                            "--certs",
                            str(d),
                        ]
                        if profiler is not None and name == args.profile:
                            profiler.enable()
                        cpu0 = time.process_time()
                        proc = await asyncio.create_subprocess_exec(
                            *cmd, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": _root()}
                        )
                        out, _ = await asyncio.wait_for(proc.communicate(), args.duration * 5 + 30)
                        if profiler is not None:
                            profiler.disable()
                        if proc.returncode != 0:
                            print(f"client failed for {name}", file=sys.stderr)
                            return 1
                        run = json.loads(out)
                        # server-process CPU (all threads) per request: robust to a busy box
                        run["cpu_us"] = 1e6 * (time.process_time() - cpu0) / run["total_calls"]
                        results.setdefault((name, conc), []).append(run)
                        print(name, conc, results[(name, conc)][-1], file=sys.stderr)
        finally:
            await broker.stop(None)
            await echo_server.stop(None)
    if profiler is not None:
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats("broker/", 30)
    return _report(args, results)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def _report(args: argparse.Namespace, results: dict[tuple[str, int], list[dict[str, Any]]]) -> int:
    lines = [
        f"# gRPC serving overhead ({dt.date.today().isoformat()})",
        "",
        "`bench/serve.py`: broker `GetAccessToken` (cached token; mTLS identity, policy, "
        "validation, tracing interceptor with the no-op provider, proto conversion) vs a bare "
        "grpcio mTLS unary echo with equal request/response bytes. Server in one process, "
        "callers in another (grpc.aio, one channel, N concurrent callers), loopback. "
        f"{args.rounds} interleaved runs of {args.duration:g} s per cell; medians shown.",
        "",
        *_machine(),
        "",
        "| callers | echo req/s | broker req/s | throughput ratio | echo p50 / p99 ms "
        "| broker p50 / p99 ms | p99 ratio | server CPU us/req echo / broker (ratio) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for conc in (1, 16):
        echo, brk = results[("echo", conc)], results[("broker", conc)]
        e_rps, b_rps = _median(echo, "rps"), _median(brk, "rps")
        e50, e99 = _median(echo, "p50_ms"), _median(echo, "p99_ms")
        b50, b99 = _median(brk, "p50_ms"), _median(brk, "p99_ms")
        ratio, p99_ratio = b_rps / e_rps, b99 / e99
        e_cpu, b_cpu = _median(echo, "cpu_us"), _median(brk, "cpu_us")
        verdicts.append(
            f"- {conc} caller(s): throughput {ratio:.2f}x (target >= 0.85x: "
            f"{'met' if ratio >= 0.85 else 'NOT met'}), p99 {p99_ratio:.2f}x (target <= 1.2x: "
            f"{'met' if p99_ratio <= 1.2 else 'NOT met'})"
        )
        lines.append(
            f"| {conc} | {e_rps:,.0f} | {b_rps:,.0f} | {ratio:.2f}x | {e50:.2f} / {e99:.2f} "
            f"| {b50:.2f} / {b99:.2f} | {p99_ratio:.2f}x "
            f"| {e_cpu:.0f} / {b_cpu:.0f} ({e_cpu / b_cpu:.2f}x) |"
        )
    lines += ["", *verdicts, ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H%M")
        out = Path(args.out) / f"serve-{stamp}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written {out}", file=sys.stderr)
    return 0


def _root() -> str:
    return str(Path(__file__).resolve().parents[1])


def main() -> int:
    parser = argparse.ArgumentParser(description="gRPC serving overhead benchmark")
    sub = parser.add_subparsers(dest="mode")
    client = sub.add_parser("client")
    client.add_argument("--target", required=True)
    client.add_argument("--method", required=True)
    client.add_argument("--concurrency", type=int, required=True)
    client.add_argument("--duration", type=float, required=True)
    client.add_argument("--certs", required=True)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--profile",
        choices=("broker", "echo"),
        default=None,
        help="cProfile the server during this path's runs (stderr)",
    )
    parser.add_argument("--out", default=str(Path(_root()) / "bench" / "results"))
    args = parser.parse_args()
    if args.mode == "client":
        print(json.dumps(asyncio.run(_client(args))))
        return 0
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
