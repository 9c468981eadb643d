"""``make demo``: the whole system on this machine, end to end, in well under a minute.

A SoftHSM token and the client key (through the ceremony CLI), the did:key and its Trusted
Services List entry, a local DOME-like verifier (oidc-provider 8.8.1, auto-login), ``broker
serve`` over mTLS, then a gRPC client that starts a login, follows it, gets and watches an access
token, and the trace of the acquisition as a tree. Everything is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from broker.jose import unverified_parts
from broker.server.gen.broker.v1 import broker_pb2
from devtools.otlp_sink import OtlpSink, render_tree
from devtools.stack import DevStack, StackError, follow_login

# Short lifetimes so the demo shows a real refresh within seconds: the verifier issues
# 20-second access tokens; the broker refreshes ahead (threshold 19 s) and never serves one
# with less than 17 s left.
ACCESS_TOKEN_TTL = 20
REFRESH_THRESHOLD = 19.0
MIN_SERVE_TTL = 17.0
SHOWN_ATTRIBUTES = (
    "rpc.method",
    "grant.id",
    "freshness",
    "cache_hit",
    "kid",
    "mechanism",
    "grant_type",
    "http.status_code",
    "http.response.status_code",
    "server.address",
    "outcome",
    "attempt",
)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _step(n: int, text: str) -> None:
    _say(f"\n== {n}. {text}")


def _claims(jwt: str) -> dict[str, Any]:
    """The access token's claims, unverified (display only), parsed strictly."""
    return unverified_parts(jwt)[1]


def _elided(jwt: str) -> str:
    head, payload, _sig = jwt.split(".")
    return f"{head[:16]}...{payload[:16]}....<signature elided>"


def _metadata() -> list[tuple[str, str]]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def run(workdir: Path) -> int:
    started = time.monotonic()
    sink = OtlpSink().start()
    provider = TracerProvider(resource=Resource.create({"service.name": "demo-client"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{sink.endpoint}/v1/traces"))
    )
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    tracer = provider.get_tracer("devtools.demo")

    _step(1, "key ceremony: SoftHSM token, P-256 client key and sealing key (broker keys ...)")
    stack = DevStack.up(
        workdir,
        otlp_endpoint=sink.endpoint,
        access_token_ttl=ACCESS_TOKEN_TTL,
        refresh_threshold=REFRESH_THRESHOLD,
        min_serve_ttl=MIN_SERVE_TTL,
    )
    try:
        _say(stack.ceremony_outputs.get("generate", stack.ceremony_outputs["show"]).rstrip())
        _say(stack.ceremony_outputs["selftest"].rstrip())
        _step(2, "Trusted Services List entry for this did:key (broker keys tsl-entry)")
        _say(stack.ceremony_outputs["tsl-entry"].rstrip())
        _step(3, "local DOME-like verifier and broker are up")
        _say(f"verifier (oidc-provider 8.8.1): {stack.peer.issuer}")
        _say(f"broker gRPC (mTLS):             127.0.0.1:{stack.grpc_port}")
        _say(f"broker HTTPS listener:          https://127.0.0.1:{stack.web_port}")
        _say("caller identity (client cert):  spiffe://demo.local/app")

        with stack.channel() as channel:
            stub = stack.stub(channel)
            _step(4, "StartAuthorization -> the user logs in at the verifier (auto-login)")
            with tracer.start_as_current_span("demo.login"):
                start = stub.StartAuthorization(
                    broker_pb2.StartAuthorizationRequest(label="demo"),
                    metadata=_metadata(),
                    timeout=15,
                )
                _say(f"login id: {start.login_id}")
                final = follow_login(start.authorization_url, stack.ca_file)
                _say(f"user agent came back to: {final.split('?')[0]}")
                login = None
                for _ in range(50):
                    login = stub.GetLogin(
                        broker_pb2.GetLoginRequest(login_id=start.login_id), timeout=5
                    ).login
                    if login.grant_id:
                        break
                    time.sleep(0.1)
            if login is None or not login.grant_id:
                raise StackError("the login did not complete")
            grant_id = login.grant_id
            _say(f"login completed: grant {grant_id}")

            _step(5, "GetAccessToken after the token went stale (a refresh in the HSM + AS)")
            time.sleep(ACCESS_TOKEN_TTL - MIN_SERVE_TTL + 0.5)
            with tracer.start_as_current_span("demo.get_access_token") as root:
                resp = stub.GetAccessToken(
                    broker_pb2.GetAccessTokenRequest(
                        grant_id=grant_id, min_ttl=Duration(seconds=5)
                    ),
                    metadata=_metadata(),
                    timeout=20,
                )
                trace_id = format(root.get_span_context().trace_id, "032x")
            token = resp.token
            _say(f"access token: {_elided(token.access_token)}")
            _say(f"subject: {token.subject}  scope: {token.scope}  type: {token.token_type}")
            _say("claims:")
            _say(json.dumps(_claims(token.access_token), indent=2)[:3000])

            _step(6, "WatchAccessToken: the broker pushes each new token after a refresh")
            stream = stub.WatchAccessToken(
                broker_pb2.WatchAccessTokenRequest(grant_id=grant_id), timeout=20
            )
            seen: list[str] = []
            try:
                for item in stream:
                    seen.append(item.token.access_token)
                    exp = item.token.expires_at.seconds
                    _say(f"pushed token #{len(seen)}: expires in {exp - time.time():.0f}s")
                    if len(seen) >= 2:
                        break
            finally:
                stream.cancel()
            if len(seen) < 2 or seen[0] == seen[1]:
                raise StackError("the watch did not deliver a refreshed token")
    except grpc.RpcError as exc:
        _say(f"gRPC call failed: {exc.code().name}")
        _say(stack.broker_log()[-3000:])
        stack.down()
        sink.stop()
        return 1
    except BaseException:
        _say(stack.broker_log()[-3000:])
        stack.down()
        sink.stop()
        raise
    _step(7, "stopping the broker (SIGTERM: drain, flush telemetry) and the verifier")
    code = stack.stop_broker()
    stack.down()
    provider.shutdown()
    _say(f"broker exited with status {code}")

    _step(8, f"trace {trace_id} of that acquisition")
    spans = sink.traces().get(trace_id, [])
    _say(render_tree(spans, attributes=SHOWN_ATTRIBUTES) or "(no spans received)")
    sink.stop()
    _say(f"\ndemo finished in {time.monotonic() - started:.1f}s; nothing left running.")
    return 0 if spans else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__)
    parser.add_argument("--workdir", help="keep the demo's files here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.workdir:
        return run(Path(args.workdir))
    with tempfile.TemporaryDirectory(prefix="broker-demo-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
