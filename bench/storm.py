"""A refresh storm: N grants due at once, refreshed by the broker's own background pass, against
a bare httpx client at the same concurrency, both against the real peer.

One run, in one process:
- a private SoftHSM2 token (``softhsm/init-token.sh``) holding the client key and the AES-256
  sealing key (the sealer serve uses);
- the oidc-provider peer (tests/peer) over TLS with a trustme CA, with ``bulk_grants`` on: it
  mints 2 N real grants with one refresh token each (``Peer.mint_grants``);
- broker: N grants with those refresh tokens in a SQLite grant store (WAL, synchronous=FULL,
  tokens sealed in the HSM, bound to the deployment identity), bulk-loaded, every access token
  close to expiry (STALE: all due now); then a TokenBroker wired as ``broker serve`` wires it
  (OAuthClient with the HSM signer and a skew monitor, the serve refresh policy, the default
  background concurrency, the serve background interval) is started and its scheduler refreshes
  them all: each refresh opens the grant, marks the intent, signs a fresh client assertion in
  the HSM, posts, validates the id_token, seals and stores the rotation. Timed from the first
  pass's claim (the pass wakes ``interval`` after start, as in serve) until the N-th refresh was
  stored;
- bare: N other minted refresh tokens posted by ``concurrency`` workers sharing one
  ``httpx.AsyncClient``, each request with its own client assertion signed BEFORE the timed part
  (same key and claims, a lifetime covering the run: the peer enforces one-time ``jti``), the
  JSON answer parsed and its status checked. Run as two halves, one before and one after the
  broker's storm (the peer's state grows during the run; the sandwich cancels the drift).
Checked: every broker grant ends ACTIVE at version 2 with a new access token and a rotated
refresh token in the store (else it counts as lost), the peer counted exactly one token request
per grant (``/admin/token_counts``), every bare request answered 200.
Reported: both rates, the ratio broker/bare (target >= 0.8x), latency per refresh, this
process's CPU per refresh, passes, load average. ``--store-dir /dev/shm`` puts the SQLite file
on a tmpfs (what the commits' fsyncs cost); ``--profile`` cProfiles the storm (stderr).

Usage: .venv/bin/python bench/storm.py [--grants N] [--interval S] [--store-dir DIR]
       [--out PATH] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import functools
import os
import pstats
import shutil
import sqlite3
import ssl
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import trustme  # noqa: E402
from common import load_average  # noqa: E402
from refresh import init_token  # noqa: E402
from storm_report import report  # noqa: E402

from broker.clock import SystemClock  # noqa: E402
from broker.jose import sign_compact  # noqa: E402
from broker.keys.api import Sealer, Signer  # noqa: E402
from broker.keys.didkey import public_jwk, public_key_from_did  # noqa: E402
from broker.keys.pkcs11 import Pkcs11KeyStore  # noqa: E402
from broker.keys.pkcs11.lib import default_module_path  # noqa: E402
from broker.oauth.client import OAuthClient  # noqa: E402
from broker.oauth.client_auth import assertion_claims, client_auth_form  # noqa: E402
from broker.oauth.config import ClientConfig  # noqa: E402
from broker.oauth.skew import SkewMonitor  # noqa: E402
from broker.tokens.broker import TokenBroker  # noqa: E402
from broker.tokens.freshness import Freshness  # noqa: E402
from broker.tokens.model import Grant, GrantStatus, GrantSummary  # noqa: E402
from broker.tokens.observer import RefreshOutcome  # noqa: E402
from broker.tokens.settings import (  # noqa: E402
    BackgroundPolicy,
    Identities,
    RefreshPolicy,
    Reporting,
)
from broker.tokens.stores.deployment import DeploymentIdentity  # noqa: E402
from broker.tokens.stores.due import due_at  # noqa: E402
from broker.tokens.stores.sealing import COLUMNS, seal_grant  # noqa: E402
from broker.tokens.stores.sqlite import SqliteGrantStore  # noqa: E402
from devtools.peer import MintedGrant, Peer, PeerSettings, Pki, start_peer, stop_peer  # noqa: E402

#: ``broker serve``'s defaults ([tokens] in broker/config/tokens.py): the refresh policy and the
#: background pass's interval; the pass's concurrency is BackgroundPolicy's default.
POLICY = RefreshPolicy(threshold=225.0, min_serve_ttl=30.0)
SERVE_INTERVAL = 30.0
CONCURRENCY = BackgroundPolicy().concurrency
ACCESS_LEFT = 120.0  # seconds left on every stored access token: STALE, due now
STORM_DEADLINE = 3600.0  # give up (and count the rest as lost) after this long
REDIRECT = "https://broker.invalid/callback"  # never used: no login happens here


class PassTimedStore(SqliteGrantStore):
    """The SQLite store, noting when each background pass claimed and how many grants."""

    claims: list[tuple[float, int]]

    async def claim_due(
        self, now: float, *, owner: str, lease: float, horizon: float = 0.0, limit: int = 1000
    ) -> list[GrantSummary]:
        started = time.perf_counter()
        claimed = await super().claim_due(
            now, owner=owner, lease=lease, horizon=horizon, limit=limit
        )
        self.claims.append((started, len(claimed)))
        return claimed


class StormObserver:
    """Counts refresh outcomes; ``done`` is set at the N-th stored refresh."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.outcomes: Counter[str] = Counter()
        self.last = 0.0
        self.durations: list[float] = []
        self.done = asyncio.Event()

    def token_served(self, grant_id: str, freshness: Freshness, *, cache_hit: bool) -> None:
        return None

    def refresh_finished(self, grant_id: str, outcome: RefreshOutcome, *, duration: float) -> None:
        self.outcomes[str(outcome)] += 1
        if outcome is RefreshOutcome.REFRESHED:
            self.last = time.perf_counter()
            self.durations.append(duration)
            if self.outcomes[str(RefreshOutcome.REFRESHED)] >= self.expected:
                self.done.set()

    def single_flight_joined(self, grant_id: str) -> None:
        return None


def make_pki(work: Path) -> Pki:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(ca_file=work / "ca.pem", cert_file=work / "cert.pem", key_file=work / "key.pem")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    cert.cert_chain_pems[0].write_to_path(str(pki.cert_file))
    cert.private_key_pem.write_to_path(str(pki.key_file))
    return pki


def as_http_client(pki: Pki, config: ClientConfig) -> httpx.AsyncClient:
    """The outbound client as serve builds it (broker.app.oauth.http_client), with the test CA."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return httpx.AsyncClient(
        verify=context,
        follow_redirects=False,
        timeout=httpx.Timeout(config.http_timeout),
        trust_env=False,
    )


def populate(
    path: Path, sealer: Sealer, minted: list[MintedGrant], *, issuer: str, did: str, now: float
) -> list[Grant]:
    """Bulk load: every row sealed by the HSM, inserted in one transaction, every grant due."""
    rule = POLICY.schedule()
    grants, rows = [], []
    for i, m in enumerate(minted):
        grant = Grant(
            grant_id=f"storm-{i:06d}",
            label="storm",
            issuer=issuer,
            client_id=did,
            subject=m.subject,
            scope="openid learcredential",
            status=GrantStatus.ACTIVE,
            access_token=f"at-old-{i}",
            access_expires_at=now + ACCESS_LEFT,
            refresh_token=m.refresh_token,
            created_at=now - 3600,
            updated_at=now - 3600,
            access_issued_at=now + ACCESS_LEFT - 3600,
        )
        due = due_at(
            rule,
            grant.grant_id,
            1,
            issued_at=grant.access_issued_at,
            expires_at=grant.access_expires_at,
        )
        if due > now:
            raise RuntimeError("a bench grant is not due: ACCESS_LEFT is too long")
        grants.append(grant)
        rows.append((*seal_grant(sealer, grant).values(), due))
    columns = (*COLUMNS, "refresh_due_at")
    marks = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO grants ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 (constants)
    with sqlite3.connect(path) as conn:
        conn.executemany(sql, rows)
    conn.close()
    return grants


async def storm(
    peer: Peer,
    pki: Pki,
    signer: Signer,
    sealer: Sealer,
    minted: list[MintedGrant],
    *,
    store_dir: Path,
    interval: float,
    profiler: cProfile.Profile | None,
) -> dict[str, Any]:
    """The broker's background pass refreshing every grant of ``minted``."""
    clock = SystemClock()
    did = signer.kid
    config = ClientConfig(issuer=peer.issuer, client_id=did, redirect_uri=REDIRECT)
    identity = DeploymentIdentity(issuer=peer.issuer, client_id=did, did=did)
    path = store_dir / f"grants-{os.getpid()}.db"
    store = await PassTimedStore.connect(
        str(path), sealer, clock, identity=identity, due_rule=POLICY.schedule()
    )
    assert isinstance(store, PassTimedStore)
    store.claims = []
    t0 = time.perf_counter()
    grants = await asyncio.to_thread(
        functools.partial(populate, issuer=peer.issuer, did=did, now=clock.now()),
        path,
        sealer,
        minted,
    )
    load_s = time.perf_counter() - t0
    observer = StormObserver(len(grants))
    http = as_http_client(pki, config)
    client = OAuthClient(
        config, http, signer, clock, skew=SkewMonitor(clock, alarm_threshold=config.clock_skew)
    )
    await client.metadata()  # discovery and JWKS as after serve's first refresh
    broker = TokenBroker(
        store,
        client,
        clock,
        refresh=POLICY,
        background=BackgroundPolicy(interval=interval),
        reporting=Reporting(observer=observer),
        identities=Identities(identity),
    )
    before = peer.token_counts()["total"]
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    cpu_started = time.process_time()
    await broker.start()
    try:
        await asyncio.wait_for(observer.done.wait(), timeout=interval + STORM_DEADLINE)
    except TimeoutError:
        pass
    finally:
        await broker.stop()
        if profiler is not None:
            profiler.disable()
    cpu = time.process_time() - cpu_started  # includes the first interval's idle wait (~0)
    first_claim = store.claims[0][0] if store.claims else started
    wall = observer.last - first_claim
    lost = 0
    for grant in grants:
        stored = await store.get(grant.grant_id)
        refreshed = (
            stored.status is GrantStatus.ACTIVE
            and stored.version == 2
            and stored.refresh_started_at is None
            and stored.access_token != grant.access_token
            and stored.refresh_token not in (None, grant.refresh_token)
        )
        lost += not refreshed
    await store.close()
    await http.aclose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    counts = peer.token_counts()
    per_grant = Counter(counts["by_grant"].get(m.grant_id, 0) for m in minted)
    return {
        "wall": wall,
        "load_s": load_s,
        "lost": lost,
        "requests": counts["total"] - before,
        "per_grant": dict(per_grant),
        "outcomes": dict(observer.outcomes),
        "passes": [n for _, n in store.claims if n],
        "latencies": observer.durations,
        "cpu": cpu,
        "first_pass_after_start": first_claim - started,
    }


@dataclass(frozen=True)
class BareRun:
    wall: float  # seconds, the timed part only
    cpu: float  # this process's CPU seconds meanwhile
    statuses: list[int]
    latencies: list[float]  # seconds per request


async def bare(peer: Peer, pki: Pki, signer: Signer, minted: list[MintedGrant]) -> BareRun:
    """``CONCURRENCY`` workers posting refresh_token grants with presigned assertions."""
    clock = SystemClock()
    did = signer.kid
    config = ClientConfig(issuer=peer.issuer, client_id=did, redirect_uri=REDIRECT)
    http = as_http_client(pki, config)
    metadata = await OAuthClient(config, http, signer, clock).metadata()
    lifetime = 600 + len(minted)  # covers this half, whatever its length
    forms = []
    for m in minted:
        claims = assertion_claims(config, metadata, now=clock.now(), jti=os.urandom(24).hex())
        claims["exp"] = claims["iat"] + lifetime
        forms.append(
            {
                "grant_type": "refresh_token",
                "refresh_token": m.refresh_token,
                **client_auth_form(did, sign_compact(signer, claims)),
            }
        )
    statuses: list[int] = []
    latencies: list[float] = []
    queue = iter(forms)

    async def worker() -> None:
        for form in queue:
            started = time.perf_counter()
            resp = await http.post(metadata.token_endpoint, data=form)
            body = resp.json()
            latencies.append(time.perf_counter() - started)
            if resp.status_code == 200 and not body.get("refresh_token"):
                raise RuntimeError("bare refresh: no refresh token in the answer")
            statuses.append(resp.status_code)

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await http.aclose()
    return BareRun(wall, cpu, statuses, latencies)


async def run(
    n: int, interval: float, store_dir: Path | None, profiler: cProfile.Profile | None
) -> dict[str, Any]:
    load_start = load_average()
    work = Path(tempfile.mkdtemp(prefix="broker-storm-"))
    token_label, pin = init_token(work)
    keys = Pkcs11KeyStore(default_module_path(), token_label, pin)
    keys.generate("storm-client", b"\x42")
    keys.generate_sealing_key("grants", b"\x43")
    signer, sealer = keys.signer("storm-client"), keys.sealer("grants")
    pki = make_pki(work)
    did = signer.kid
    settings = PeerSettings(
        client_id=did,
        client_jwk=public_jwk(public_key_from_did(did), kid=did),
        redirect_uris=[REDIRECT],
        access_token_ttl=3600,
        bulk_grants=True,
    )
    peer = start_peer(pki, settings, work)
    try:
        t0 = time.perf_counter()
        broker_grants = peer.mint_grants(n)
        bare_grants = peer.mint_grants(n)
        mint_s = time.perf_counter() - t0
        half = n // 2
        first = await bare(peer, pki, signer, bare_grants[:half])
        result = await storm(
            peer,
            pki,
            signer,
            sealer,
            broker_grants,
            store_dir=store_dir or work,
            interval=interval,
            profiler=profiler,
        )
        second = await bare(peer, pki, signer, bare_grants[half:])
        bare_counts = peer.token_counts()["by_grant"]
    finally:
        stop_peer(peer)
        keys.close()
        shutil.rmtree(work, ignore_errors=True)
    return {
        **result,
        "n": n,
        "interval": interval,
        "concurrency": CONCURRENCY,
        "store_dir": "the bench's temp dir" if store_dir is None else str(store_dir),
        "mint_s": mint_s,
        "bare_wall": first.wall + second.wall,
        "bare_halves": (first.wall, second.wall),
        "bare_cpu": first.cpu + second.cpu,
        "bare_statuses": dict(Counter(first.statuses + second.statuses)),
        "bare_latencies": first.latencies + second.latencies,
        "bare_per_grant": dict(Counter(bare_counts.get(m.grant_id, 0) for m in bare_grants)),
        "load_start": load_start,
        "load_end": load_average(),
        "mechanism": signer.mechanism,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument(
        "--interval",
        type=float,
        default=SERVE_INTERVAL,
        help="the background pass's interval (default: serve's)",
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        help="where the SQLite file lives (default: the bench's temp dir, on disk; a tmpfs "
        "such as /dev/shm shows what the commits' fsyncs cost)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the broker's storm (stderr)"
    )
    args = parser.parse_args()
    if args.grants < 2:
        parser.error("--grants must be at least 2")
    profiler = cProfile.Profile() if args.profile else None
    result = asyncio.run(run(args.grants, args.interval, args.store_dir, profiler))
    if profiler is not None:
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats("broker/", 40)
    text = report(result)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H%M")
    out = args.out or ROOT / "bench" / "results" / f"storm-{stamp}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
