"""Refresh latency: the broker's refresh() vs a bare HTTP POST, against the real peer.

One run, in one process:
- a private SoftHSM2 token (``softhsm/init-token.sh``), the client key generated in it;
- the oidc-provider peer (tests/peer) over TLS with a trustme CA, started by the bench;
- two grants obtained through the real login flow (LoginService + the HTTPS listener);
- then, interleaved, N iterations of
  (a) ``OAuthClient.refresh()``: fresh HSM-signed client assertion (SoftHSM, CKM_ECDSA), strict
      response parsing, id_token validation (ES256 against the cached JWKS);
  (b) a bare ``httpx`` POST of a client assertion signed BEFORE the timed loop (the peer
      enforces one-time ``jti``, so N distinct ones are presigned) and ``json()`` of the answer.
Each path rotates its own refresh-token chain. Reported: p50 / p90 / p99 / max per path and the
p50 and p99 ratios (target: broker <= 1.1 x bare).

Usage: .venv/bin/python bench/refresh.py [--iterations N] [--warmup W] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import os
import platform
import pstats
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_model, percentile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine_info() -> dict[str, str]:
    cpu = cpu_model()
    node = subprocess.run(
        ["node", "--version"], check=False, capture_output=True, text=True
    ).stdout.strip()
    softhsm = subprocess.run(
        ["softhsm2-util", "--version"], check=False, capture_output=True, text=True
    ).stdout.strip()
    return {
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": f"{cpu} x {os.cpu_count()}",
        "python": platform.python_version(),
        "node": node,
        "softhsm": softhsm or "unknown",
        "oidc-provider": "8.8.1",
    }


def init_token(base: Path) -> tuple[str, str]:
    """A private SoftHSM token; returns (token label, PIN). Sets SOFTHSM2_CONF."""
    label = "broker-bench"
    pin = secrets.token_hex(8)
    pin_file, so_pin_file = base / "user.pin", base / "so.pin"
    for path, value in ((pin_file, pin), (so_pin_file, secrets.token_hex(8))):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
    hsm_dir = base / "hsm"
    subprocess.run(
        [
            str(ROOT / "softhsm" / "init-token.sh"),
            str(hsm_dir),
            label,
            str(so_pin_file),
            str(pin_file),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    os.environ["SOFTHSM2_CONF"] = str(hsm_dir / "softhsm2.conf")
    return label, pin


async def run(
    iterations: int, warmup: int, profiler: cProfile.Profile | None = None
) -> tuple[dict[str, list[float]], dict[str, str]]:
    import httpx
    import trustme

    from broker.clock import SystemClock
    from broker.keys.didkey import public_jwk, public_key_from_did
    from broker.keys.pkcs11 import Pkcs11KeyStore
    from broker.keys.pkcs11.lib import default_module_path
    from broker.oauth.client_auth import client_assertion, client_auth_form
    from broker.web.server import WebServer
    from devtools.peer import PeerSettings, Pki, free_port, start_peer, stop_peer
    from tests.integration.conftest import CALLBACK_PATH, SwappableApp
    from tests.integration.flow import follow_to_callback, make_stack

    work = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    token_label, pin = init_token(work)
    store = Pkcs11KeyStore(default_module_path(), token_label, pin)
    store.generate("bench-client", b"\x42")
    signer = store.signer("bench-client")

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(ca_file=work / "ca.pem", cert_file=work / "cert.pem", key_file=work / "key.pem")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    cert.cert_chain_pems[0].write_to_path(str(pki.cert_file))
    cert.private_key_pem.write_to_path(str(pki.key_file))

    port = free_port()
    base_url = f"https://127.0.0.1:{port}"
    did = signer.kid
    peer = start_peer(
        pki,
        PeerSettings(
            client_id=did,
            client_jwk=public_jwk(public_key_from_did(did), kid=did),
            redirect_uris=[base_url + CALLBACK_PATH],
            access_token_ttl=3600,
        ),
        work,
    )
    holder = SwappableApp()
    server = WebServer(holder, host="127.0.0.1", port=port, tls=pki.tls)
    await server.start()
    samples: dict[str, list[float]] = {"broker": [], "bare": [], "assertion": [], "bare+sign": []}
    try:
        async with (
            httpx.AsyncClient(verify=pki.ssl_context()) as http,
            httpx.AsyncClient(verify=pki.ssl_context(), follow_redirects=False) as agent,
        ):
            stack = make_stack(peer, signer, holder, base_url, http)
            for label in ("broker", "bare", "bare-sign"):
                view = await stack.login.start(label=label)
                await follow_to_callback(
                    agent, view.authorization_url or "", stack.config.redirect_uri
                )
            (broker_tokens, *_), (bare_tokens, *_), (signed_tokens, *_) = stack.sink.grants
            subject = broker_tokens.subject or ""
            broker_rt = broker_tokens.refresh_token or ""
            bare_rt = bare_tokens.refresh_token or ""
            signed_rt = signed_tokens.refresh_token or ""
            metadata = await stack.client.metadata()
            total = warmup + iterations
            clock = SystemClock()
            presigned = [
                await client_assertion(signer, stack.config, metadata, now=clock.now())
                for _ in range(total)
            ]
            for i in range(total):
                if profiler is not None and i >= warmup:
                    profiler.enable()
                t0 = time.perf_counter()
                tokens = await stack.client.refresh(broker_rt, subject=subject)
                t1 = time.perf_counter()
                if profiler is not None:
                    profiler.disable()
                broker_rt = tokens.refresh_token or broker_rt
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": bare_rt,
                    **client_auth_form(did, presigned[i]),
                }
                t2 = time.perf_counter()
                resp = await http.post(metadata.token_endpoint, data=form)
                body = resp.json()
                t3 = time.perf_counter()
                if resp.status_code != 200:
                    raise RuntimeError(
                        f"bare refresh failed: HTTP {resp.status_code} {body.get('error')}"
                    )
                bare_rt = body["refresh_token"]
                t4 = time.perf_counter()
                await client_assertion(signer, stack.config, metadata, now=clock.now())
                t5 = time.perf_counter()
                # bare POST that signs its assertion with the same HSM each time
                assertion = await client_assertion(signer, stack.config, metadata, now=clock.now())
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": signed_rt,
                    **client_auth_form(did, assertion),
                }
                resp = await http.post(metadata.token_endpoint, data=form)
                body = resp.json()
                t6 = time.perf_counter()
                if resp.status_code != 200:
                    raise RuntimeError(
                        f"bare+sign refresh failed: HTTP {resp.status_code} {body.get('error')}"
                    )
                signed_rt = body["refresh_token"]
                if i >= warmup:
                    samples["broker"].append((t1 - t0) * 1000)
                    samples["bare"].append((t3 - t2) * 1000)
                    samples["assertion"].append((t5 - t4) * 1000)
                    samples["bare+sign"].append((t6 - t5) * 1000)
            info = {
                "mechanism": signer.mechanism,
                "iterations": str(iterations),
                "warmup": str(warmup),
            }
    finally:
        await server.stop()
        stop_peer(peer)
        store.close()
    return samples, info


def report(samples: dict[str, list[float]], info: dict[str, str]) -> str:
    machine = machine_info()
    rows = []
    for name in ("broker", "bare", "bare+sign", "assertion"):
        values = samples[name]
        rows.append(
            f"| {name} | {percentile(values, 50):.2f} | {percentile(values, 90):.2f} | "
            f"{percentile(values, 99):.2f} | {max(values):.2f} | {statistics.mean(values):.2f} |"
        )
    p50 = percentile(samples["broker"], 50) / percentile(samples["bare"], 50)
    p99 = percentile(samples["broker"], 99) / percentile(samples["bare"], 99)
    verdict = "meets" if p50 <= 1.1 else "MISSES"
    s50 = percentile(samples["broker"], 50) / percentile(samples["bare+sign"], 50)
    s99 = percentile(samples["broker"], 99) / percentile(samples["bare+sign"], 99)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"# Refresh latency: broker vs bare POST ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        "`bench/refresh.py`: the broker's `OAuthClient.refresh()` (fresh client assertion signed",
        "in SoftHSM, strict parsing, id_token validation) against a bare httpx POST of a",
        "pre-signed assertion, interleaved, each path rotating its own refresh-token chain, both",
        "against the oidc-provider 8.8.1 peer over TLS on loopback.",
        "",
        "| path | p50 ms | p90 ms | p99 ms | max ms | mean ms |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "`assertion` is the signing of one client assertion alone (SoftHSM via a worker thread),",
        "measured in the same loop: the part of the broker's overhead that is HSM signing.",
        "`bare+sign` is the bare POST preceded by signing a fresh assertion in the same HSM (what",
        "the DOME profile requires per attempt), on its own refresh-token chain.",
        "",
        f"Ratio broker/bare: p50 **{p50:.2f}x**, p99 {p99:.2f}x (target <= 1.1x at p50: {verdict}).",
        f"Ratio broker/bare+sign: p50 **{s50:.2f}x**, p99 {s99:.2f}x.",
        f"Load average (1/5/15 min) at report time: {load}.",
        "",
        "## Run",
        "",
        *(f"- {k}: {v}" for k, v in {**info, **machine}.items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the broker's refresh() calls (stderr)"
    )
    args = parser.parse_args()
    profiler = cProfile.Profile() if args.profile else None
    samples, info = asyncio.run(run(args.iterations, args.warmup, profiler))
    if profiler is not None:
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats("broker/", 40)
        stats.print_callees("id_token.py.*_validate|client.py.*_validate|_token_request")
    text = report(samples, info)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H%M")
    out = args.out or ROOT / "bench" / "results" / f"refresh-{stamp}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
