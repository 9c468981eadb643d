"""Soak (TEST-CATALOGUE J03): ``broker serve`` under steady load with short tokens and AS faults.

One run:
- a DevStack (SoftHSM token, PKI, the oidc-provider 8.8.1 peer, ``broker serve`` on SQLite) with
  access tokens of ``--token-ttl`` s (45); the peer sits behind a plain loopback TCP fault proxy
  (TLS passes through) on the port its issuer URL names, so the AS link can be cut;
- ``broker serve`` runs through ``devtools.session_probe`` (the same serve in the same
  process plus a thread that writes its open PKCS#11 session count to a file);
- ``--grants`` (200) grants made by real interactive logins (StartAuthorization, the peer's
  auto-login, the HTTPS callback);
- then ``--duration`` s (600) of GetAccessToken at ``--rate`` calls/s (50) round-robin over the
  grants from a few grpc.aio channels, while the AS "restarts" twice (at 15 % and 30 % of the
  run: the proxy resets every connection and refuses new ones for ``--restart-down`` s) and is
  down once for ``--outage`` s (60, from 35 % of the run: the faults and the recovery from them
  are over before the second half, over which the RSS/fd slopes are fitted);
- every ``--sample`` s (10): RSS, open fds and threads of the serve process, its SoftHSM
  session count; at the end the fds by kind, the sessions, every grant's status, and the
  peer's admin log (refresh requests per grant per token lifetime, rotated-out refresh tokens
  presented again, answers by status).

Why the AS is not restarted as a process: the peer keeps its grants and refresh tokens in
memory, so a process restart kills every refresh token (as DOME's Verifier does, DOME-PROFILE
bug 3): all grants would be lost by construction and the soak would measure nothing but that.
A "restart" here is what a restarting AS with durable state looks like on the wire: every open
connection reset, new connections refused for a few seconds. The peer runs with a 60 s
refresh-token reuse grace (DOME itself never revokes a rotated-out refresh token): a refresh the
AS committed whose answer was cut by the reset is retried once with the old token.

    .venv/bin/python bench/soak.py [--duration 600] [--grants 200] [--rate 50] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # devtools/ is a top-level package of the checkout

import grpc  # noqa: E402
from common import cpu_model, load_average, percentile  # noqa: E402

from broker.keys.didkey import jwk_from_did  # noqa: E402
from broker.server.gen.broker.v1 import broker_pb2, broker_pb2_grpc  # noqa: E402
from devtools.faultproxy import FaultProxy, Toxics  # noqa: E402
from devtools.peer import PeerSettings, start_peer, stop_peer  # noqa: E402
from devtools.session_probe import read_count  # noqa: E402
from devtools.stack import DevStack, StackError, follow_login  # noqa: E402

RPC_TIMEOUT = 20.0
LOGIN_WORKERS = 4
CHANNELS = 4
REFRESH_FRACTION = 0.9
REFRESH_THRESHOLD = 5.0
MIN_SERVE_TTL = 2.0
BACKGROUND_INTERVAL = 2.0
REFRESH_GRACE = 60
PEER_REFRESH_TOKEN_TTL = 3600  # oidc-provider's default in tests/peer
RECOVERY_WAIT_S = 240.0  # after the run: every grant must serve again within this
PROBE_INTERVAL = 1.0


@dataclass(frozen=True)
class SoakOptions:
    duration: float = 600.0
    grants: int = 200
    rate: float = 50.0
    token_ttl: int = 45
    outage: float = 60.0
    restart_down: float = 3.0
    sample: float = 10.0
    restarts_at: tuple[float, ...] = (0.15, 0.3)
    outage_at: float = 0.35


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    threads: int
    sessions: int | None


@dataclass
class Run:
    options: SoakOptions
    samples: list[Sample] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    errors_by_window: dict[int, Counter[str]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    skipped: int = 0


# --- the serve process from outside -------------------------------------------------------


def proc_status(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, threads) of ``pid``."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def _socket_ports(pid: int) -> dict[str, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, TCP state) from the process's network view."""
    found: dict[str, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            found[inode] = (
                int(local.rsplit(":", 1)[1], 16),
                int(remote.rsplit(":", 1)[1], 16),
                state,
            )
    return found


def fds_by_kind(pid: int, *, as_port: int, grpc_port: int, web_port: int) -> dict[str, int]:
    """Open fds of ``pid`` by kind: ``as_link`` (TCP connections to the AS), ``grpc_in`` /
    ``web_in`` (accepted connections), ``listen``, ``other_socket``, ``file``, ``other``."""
    ports = _socket_ports(pid)
    kinds: Counter[str] = Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            local, remote, state = ports.get(target[8:-1], (0, 0, ""))
            if state == "0A":
                kinds["listen"] += 1
            elif remote == as_port:
                kinds["as_link"] += 1
            elif local == grpc_port:
                kinds["grpc_in"] += 1
            elif local == web_port:
                kinds["web_in"] += 1
            else:
                kinds["other_socket"] += 1
        elif target.startswith("/"):
            kinds["file"] += 1
        else:
            kinds["other"] += 1
    return dict(sorted(kinds.items()))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sessions(probe: Path, *, not_before: float, timeout: float = 30.0) -> int | None:
    """The serve process's open session count, written after ``not_before``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            at, count = read_count(probe)
            if at >= not_before:
                return count
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise StackError("the session probe wrote nothing recent")
        time.sleep(0.2)


def sample(pid: int, probe: Path, t0: float) -> Sample:
    rss, threads = proc_status(pid)
    now = time.time()
    try:
        _, count = read_count(probe)
    except (OSError, ValueError, KeyError):
        count = None
    return Sample(round(now - t0, 1), rss, fd_count(pid), threads, count)


# --- the stack ------------------------------------------------------------------------------


def bring_up(workdir: Path, options: SoakOptions) -> tuple[DevStack, FaultProxy, Path]:
    """The DevStack with the peer behind a plain fault proxy and serve run through the probe."""
    stack = DevStack.up(
        workdir,
        start_broker=False,
        access_token_ttl=options.token_ttl,
        refresh_threshold=REFRESH_THRESHOLD,
        min_serve_ttl=MIN_SERVE_TTL,
        background_interval=BACKGROUND_INTERVAL,
        refresh_grace_seconds=REFRESH_GRACE,
        max_concurrent_rpcs=1000,
    )
    proxy: FaultProxy | None = None
    try:
        old = stack.peer
        public_port = urlsplit(old.issuer).port
        assert public_port is not None and stack.config is not None
        stop_peer(old)
        stack.peer = start_peer(
            old.pki,
            PeerSettings(
                client_id=stack.did,
                client_jwk=jwk_from_did(stack.did),
                redirect_uris=[stack.config.redirect_uri],
                public_port=public_port,
                access_token_ttl=options.token_ttl,
                refresh_grace_seconds=REFRESH_GRACE,
            ),
            stack.workdir,
        )
        direct = urlsplit(stack.peer.direct_url or "").port
        assert stack.peer.issuer == old.issuer and direct is not None
        proxy = FaultProxy("127.0.0.1", direct, listen_port=public_port)
        proxy.start()
        text = stack.config_path.read_text()
        for header, line in (
            ("[tokens]\n", f"refresh_fraction = {REFRESH_FRACTION}\n"),
            ("[oauth]\n", f"refresh_token_lifetime = {PEER_REFRESH_TOKEN_TTL}\n"),
        ):
            assert header in text
            text = text.replace(header, header + line, 1)
        stack.config_path.write_text(text)
        probe = workdir / "sessions.json"
        stack.serve_module = "devtools.session_probe"
        stack.env["BROKER_SESSION_PROBE"] = str(probe)
        stack.env["BROKER_SESSION_PROBE_INTERVAL"] = str(PROBE_INTERVAL)
        for attempt in range(3):  # a concurrent SoftHSM login can fail once (see tests/e2e)
            try:
                stack.start_broker(timeout=60)
                break
            except StackError:
                stack.stop_broker()
                if attempt == 2:
                    raise
        return stack, proxy, probe
    except BaseException:
        if proxy is not None:
            proxy.stop()
        stack.down()
        raise


def one_login(stack: DevStack, index: int) -> str:
    with stack.channel() as channel:
        stub = stack.stub(channel)
        start = stub.StartAuthorization(
            broker_pb2.StartAuthorizationRequest(label=f"soak-{index}"), timeout=RPC_TIMEOUT
        )
        follow_login(start.authorization_url, stack.ca_file)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = stub.GetLogin(
                broker_pb2.GetLoginRequest(login_id=start.login_id), timeout=RPC_TIMEOUT
            ).login
            if got.grant_id:
                return str(got.grant_id)
            if got.state != broker_pb2.LOGIN_STATE_PENDING:
                raise StackError(f"login {index} ended {got.state} {got.error}")
            time.sleep(0.1)
    raise StackError(f"login {index} did not complete")


def make_grants(stack: DevStack, count: int) -> list[str]:
    with ThreadPoolExecutor(LOGIN_WORKERS) as pool:
        return list(pool.map(lambda i: one_login(stack, i), range(count)))


# --- load, faults and samples ----------------------------------------------------------------


async def _load(stubs: list[Any], grants: list[str], run: Run, t0: float, stop_at: float) -> None:
    rate = run.options.rate
    in_flight: set[asyncio.Task[None]] = set()

    async def one(grant_id: str, stub: Any) -> None:
        sent = time.monotonic()
        try:
            await stub.GetAccessToken(
                broker_pb2.GetAccessTokenRequest(grant_id=grant_id), timeout=RPC_TIMEOUT
            )
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        run.calls[code] += 1
        run.latencies_ms.append((time.monotonic() - sent) * 1000)
        if code != "OK":
            window = int((time.time() - t0) // run.options.sample)
            run.errors_by_window.setdefault(window, Counter())[code] += 1

    i = 0
    start = time.monotonic()
    while time.monotonic() < stop_at:
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= 2000:
            run.skipped += 1  # the client cannot keep up: counted, never silently dropped
        else:
            task = asyncio.ensure_future(one(grants[i % len(grants)], stubs[i % len(stubs)]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        i += 1
    if in_flight:
        await asyncio.wait(in_flight, timeout=RPC_TIMEOUT + 5)


async def _faults(proxy: FaultProxy, run: Run, t0: float) -> None:
    o = run.options

    async def at(offset: float) -> None:
        await asyncio.sleep(max(0.0, t0 + offset - time.time()))

    def note(what: str) -> None:
        run.events.append((round(time.time() - t0, 1), what))

    plan = sorted(
        [(o.duration * f, "restart", o.restart_down) for f in o.restarts_at]
        + [(o.duration * o.outage_at, "outage", o.outage)]
    )
    for offset, kind, down in plan:
        await at(offset)
        await asyncio.to_thread(proxy.set, Toxics(down=True))
        note(f"AS {kind}: connections reset, refused")
        await asyncio.sleep(down)
        await asyncio.to_thread(proxy.clear)
        note(f"AS {kind} over ({down:g} s down)")


async def _sampler(pid: int, probe: Path, run: Run, t0: float, stop_at: float) -> None:
    while time.monotonic() < stop_at:
        run.samples.append(await asyncio.to_thread(sample, pid, probe, t0))
        await asyncio.sleep(run.options.sample)


async def _drive(
    stack: DevStack, proxy: FaultProxy, probe: Path, grants: list[str], run: Run
) -> dict[str, Any]:
    assert stack.broker is not None
    pid = stack.broker.pid
    channels = [stack.aio_channel() for _ in range(CHANNELS)]
    try:
        stubs = [broker_pb2_grpc.TokenBrokerStub(c) for c in channels]  # type: ignore[no-untyped-call]
        for stub in stubs:  # every channel connected before the baseline
            await stub.GetGrant(broker_pb2.GetGrantRequest(grant_id=grants[0]), timeout=RPC_TIMEOUT)
        kinds = {"as_port": proxy.port, "grpc_port": stack.grpc_port, "web_port": stack.web_port}
        # The logins' browser connections to the listener idle out first (uvicorn keep-alive).
        deadline = time.monotonic() + 60
        while fds_by_kind(pid, **kinds).get("web_in", 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        begin = time.time()
        baseline = {
            "fds": fd_count(pid),
            "fds_by_kind": fds_by_kind(pid, **kinds),
            "sessions": await asyncio.to_thread(sessions, probe, not_before=begin),
        }
        t0 = time.time()
        stop_at = time.monotonic() + run.options.duration
        await asyncio.gather(
            _load(stubs, grants, run, t0, stop_at),
            _faults(proxy, run, t0),
            _sampler(pid, probe, run, t0, stop_at),
        )
        load_end = time.time()
        run.samples.append(await asyncio.to_thread(sample, pid, probe, t0))
        statuses, recovered_after = await _final_grants(stubs, grants)
        end = time.time()
        final = {
            "fds": fd_count(pid),
            "fds_by_kind": fds_by_kind(pid, **kinds),
            "sessions": await asyncio.to_thread(sessions, probe, not_before=end),
        }
        return {
            "t0": t0,
            "load_end": load_end,
            "baseline": baseline,
            "final": final,
            "grant_statuses": statuses,
            "recovered_after_s": recovered_after,
        }
    finally:
        await asyncio.gather(*(c.close() for c in channels))


async def _final_grants(stubs: list[Any], grants: list[str]) -> tuple[dict[str, int], float]:
    """Every grant's status, then GetAccessToken on each until all serve (bounded); returns the
    status counts and how long serving every grant again took after the load ended."""
    statuses: Counter[str] = Counter()
    for i, grant_id in enumerate(grants):
        resp = await stubs[i % len(stubs)].GetGrant(
            broker_pb2.GetGrantRequest(grant_id=grant_id), timeout=RPC_TIMEOUT
        )
        statuses[broker_pb2.GrantStatus.Name(resp.grant.status)] += 1
    started = time.monotonic()
    pending = list(grants)
    while pending and time.monotonic() - started < RECOVERY_WAIT_S:
        still = []
        for i, grant_id in enumerate(pending):
            try:
                await stubs[i % len(stubs)].GetAccessToken(
                    broker_pb2.GetAccessTokenRequest(grant_id=grant_id), timeout=RPC_TIMEOUT
                )
            except grpc.aio.AioRpcError:
                still.append(grant_id)
        pending = still
        if pending:
            await asyncio.sleep(2.0)
    statuses["NOT_SERVING_AT_END"] = len(pending)
    return dict(statuses), round(time.monotonic() - started, 1)


# --- the AS's view -------------------------------------------------------------------------


def refresh_stats(
    log: dict[str, Any], t0: float, load_end: float, grants: int, ttl: int
) -> dict[str, Any]:
    """Refresh requests from the peer's admin log: per grant per token lifetime over the load
    window, by status, per refresh-token chain (one chain per code exchange), and refresh tokens
    presented more than once (a rotated-out token sent again)."""
    requests = log.get("token_requests", [])
    chain_of: dict[str, int] = {}
    per_chain: Counter[int] = Counter()
    presented: Counter[str] = Counter()
    chains = 0
    for entry in requests:
        issued = entry.get("issued") or {}
        form = entry.get("form") or {}
        if entry.get("grant_type") == "authorization_code" and issued.get("refresh_token"):
            chain_of[issued["refresh_token"]] = chains
            chains += 1
        elif entry.get("grant_type") == "refresh_token":
            old = form.get("refresh_token", "")
            presented[old] += 1
            chain = chain_of.get(old, -1)
            per_chain[chain] += 1
            if issued.get("refresh_token"):
                chain_of[issued["refresh_token"]] = chain
    in_window = [
        r
        for r in requests
        if r.get("grant_type") == "refresh_token" and t0 * 1000 <= r.get("at", 0) <= load_end * 1000
    ]
    lifetimes = (load_end - t0) / ttl
    counts = [per_chain[c] for c in range(chains)]
    return {
        "refresh_requests_in_run": len(in_window),
        "by_status": dict(Counter(str(r.get("status")) for r in in_window)),
        "by_error": dict(Counter(str(r.get("error")) for r in in_window if r.get("error"))),
        "per_grant_per_lifetime": round(len(in_window) / grants / lifetimes, 3),
        "ideal_per_lifetime": round(1 / REFRESH_FRACTION, 3),
        "refresh_tokens_presented_twice": sum(1 for n in presented.values() if n > 1),
        "per_grant_total_min_max": [min(counts, default=0), max(counts, default=0)],
        "unchained_refreshes": per_chain.get(-1, 0),
    }


# --- the run -------------------------------------------------------------------------------


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return 0.0
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def soak(options: SoakOptions, workdir: Path) -> dict[str, Any]:
    """Run the soak in ``workdir`` and return its report (see the module docstring)."""
    stack, proxy, probe = bring_up(workdir, options)
    run = Run(options)
    try:
        made = time.monotonic()
        grants = make_grants(stack, options.grants)
        login_s = time.monotonic() - made
        drive = asyncio.run(_drive(stack, proxy, probe, grants, run))
        peer_log = stack.peer.admin_log()
        serve_log = stack.broker_log()
    finally:
        try:
            stack.down()
        finally:
            proxy.stop()
    half = [s for s in run.samples if s.t >= options.duration / 2]
    statuses = drive["grant_statuses"]
    lost = sum(
        v for k, v in statuses.items() if k not in ("GRANT_STATUS_ACTIVE", "NOT_SERVING_AT_END")
    )
    lat = run.latencies_ms or [0.0]
    b, f = drive["baseline"], drive["final"]
    return {
        "options": asdict(options),
        "settings": {
            "refresh_fraction": REFRESH_FRACTION,
            "refresh_threshold": REFRESH_THRESHOLD,
            "min_serve_ttl": MIN_SERVE_TTL,
            "background_interval": BACKGROUND_INTERVAL,
            "peer_refresh_grace_s": REFRESH_GRACE,
            "refresh_token_lifetime": PEER_REFRESH_TOKEN_TTL,
            "store": "sqlite",
        },
        "logins_s": round(login_s, 1),
        "calls": dict(run.calls),
        "calls_total": sum(run.calls.values()),
        "client_skipped": run.skipped,
        "errors_by_code": {k: v for k, v in run.calls.items() if k != "OK"},
        "errors_by_window": {
            f"{int(w * options.sample)}s": dict(c) for w, c in sorted(run.errors_by_window.items())
        },
        "latency_ms": {
            "p50": round(percentile(lat, 50), 2),
            "p99": round(percentile(lat, 99), 2),
            "max": round(max(lat), 2),
        },
        "events": run.events,
        "samples": [asdict(s) for s in run.samples],
        "rss_slope_kib_per_min_second_half": round(
            slope_per_min([(s.t, s.rss_kib) for s in half]), 1
        ),
        "fd_slope_per_min_second_half": round(slope_per_min([(s.t, s.fds) for s in half]), 3),
        "threads_slope_per_min_second_half": round(
            slope_per_min([(s.t, s.threads) for s in half]), 3
        ),
        "baseline": b,
        "final": f,
        "fds_without_as_link": {
            "start": b["fds"] - b["fds_by_kind"].get("as_link", 0),
            "end": f["fds"] - f["fds_by_kind"].get("as_link", 0),
        },
        "grant_statuses": statuses,
        "grants_lost": lost,
        "recovered_after_s": drive["recovered_after_s"],
        "refresh": refresh_stats(
            peer_log, drive["t0"], drive["load_end"], options.grants, options.token_ttl
        ),
        "serve_log_criticals": sum(1 for line in serve_log.splitlines() if '"CRITICAL"' in line),
        "serve_log_errors": sum(1 for line in serve_log.splitlines() if '"ERROR"' in line),
    }


def machine() -> dict[str, str]:
    return {
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": f"{cpu_model()} x {os.cpu_count()}",
        "python": platform.python_version(),
        "load_average_1_5_15": load_average(),
    }


def render_markdown(report: dict[str, Any], when: dt.datetime) -> str:
    o, r, b, f = report["options"], report["refresh"], report["baseline"], report["final"]
    m = report["machine"]
    samples = report["samples"]
    rows = "\n".join(
        f"| {s['t']:.0f} | {s['rss_kib'] / 1024:.1f} | {s['fds']} | {s['threads']} "
        f"| {s['sessions']} |"
        for s in samples
    )
    errors = ", ".join(f"{k} {v}" for k, v in sorted(report["errors_by_code"].items())) or "none"
    windows = "; ".join(
        f"{w}: " + ", ".join(f"{k} {v}" for k, v in c.items())
        for w, c in report["errors_by_window"].items()
    )
    events = "; ".join(f"{t:.0f} s {what}" for t, what in report["events"])
    return f"""# Soak ({when:%Y-%m-%d %H:%M} UTC)

`bench/soak.py` (TEST-CATALOGUE J03): `broker serve` (SQLite store, SoftHSM2) with {o["grants"]}
grants from real logins against the oidc-provider 8.8.1 peer, access tokens of {o["token_ttl"]} s,
{o["rate"]:g} GetAccessToken/s round-robin over the grants for {o["duration"]:g} s, the AS link
through a fault proxy: two AS "restarts" (every connection reset, {o["restart_down"]:g} s refused)
and one {o["outage"]:g} s outage. The peer is not restarted as a process: its state is in memory,
so that would kill every refresh token (DOME bug 3) and lose every grant by construction; a restart
is modelled as what an AS with durable state looks like on the wire. Peer refresh-token reuse grace
{report["settings"]["peer_refresh_grace_s"]} s (a refresh whose answer a reset cut is retried once
with the old token; DOME never revokes rotated-out refresh tokens). Broker: refresh_fraction
{report["settings"]["refresh_fraction"]}, refresh_threshold {report["settings"]["refresh_threshold"]} s,
min_serve_ttl {report["settings"]["min_serve_ttl"]} s, background_interval
{report["settings"]["background_interval"]} s, refresh_token_lifetime
{report["settings"]["refresh_token_lifetime"]} s.

- host: {m["host"]} ({m["os"]}); CPU: {m["cpu"]}; Python {m["python"]}
- load average (1/5/15 min) at report time: {m["load_average_1_5_15"]} (a shared box)
- logins: {o["grants"]} in {report["logins_s"]} s

## Results

| | start | end |
|---|---|---|
| open fds (serve) | {b["fds"]} | {f["fds"]} |
| fds by kind | {b["fds_by_kind"]} | {f["fds_by_kind"]} |
| fds without AS-link connections | {report["fds_without_as_link"]["start"]} | {report["fds_without_as_link"]["end"]} |
| SoftHSM sessions (serve) | {b["sessions"]} | {f["sessions"]} |

- RSS slope over the second half: {report["rss_slope_kib_per_min_second_half"]} KiB/min; fds
  {report["fd_slope_per_min_second_half"]}/min; threads {report["threads_slope_per_min_second_half"]}/min
- calls: {report["calls_total"]} ({report["calls"].get("OK", 0)} OK), client-side skipped
  {report["client_skipped"]}; latency p50 {report["latency_ms"]["p50"]} ms, p99
  {report["latency_ms"]["p99"]} ms, max {report["latency_ms"]["max"]} ms
- errors by gRPC code: {errors}
- errors by {o["sample"]:g} s window (from the start of the load): {windows or "none"}
- fault events: {events}
- refresh requests at the AS during the load: {r["refresh_requests_in_run"]} (by status
  {r["by_status"]}, errors {r["by_error"] or "none"}); per grant per token lifetime
  **{r["per_grant_per_lifetime"]}** (the schedule's ideal 1/refresh_fraction = {r["ideal_per_lifetime"]});
  per grant over the whole run min/max {r["per_grant_total_min_max"]}; refresh tokens presented
  twice {r["refresh_tokens_presented_twice"]}
- grants at the end: {report["grant_statuses"]}; **grants lost: {report["grants_lost"]}**; every
  grant served again {report["recovered_after_s"]} s after the load ended
- serve log: {report["serve_log_errors"]} ERROR, {report["serve_log_criticals"]} CRITICAL lines

## Samples (every {o["sample"]:g} s)

| t (s) | RSS (MiB) | fds | threads | SoftHSM sessions |
|---|---|---|---|---|
{rows}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--grants", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--token-ttl", type=int, default=45)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--restart-down", type=float, default=3.0)
    parser.add_argument("--sample", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    options = SoakOptions(
        duration=args.duration,
        grants=args.grants,
        rate=args.rate,
        token_ttl=args.token_ttl,
        outage=args.outage,
        restart_down=args.restart_down,
        sample=args.sample,
    )
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        report = soak(options, Path(tmp))
    write(report, args.out)
    return 0


def write(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Add the machine and date to ``report`` and write it as JSON and markdown into ``out``."""
    when = dt.datetime.now(dt.UTC)
    report["machine"] = machine()
    report["date"] = when.isoformat(timespec="seconds")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{when:%Y-%m-%d-%H%M}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    md_path.write_text(render_markdown(report, when))
    print(md_path.read_text())
    return json_path, md_path


if __name__ == "__main__":
    threading.current_thread().name = "soak"
    sys.exit(main())
