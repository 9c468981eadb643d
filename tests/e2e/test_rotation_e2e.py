"""Client-key rotation (issue 10 section 4) with the real service, while callers keep getting
tokens for grants of both identities, with no failed call.

Two ``broker serve`` replicas on one PostgreSQL schema and one SoftHSM token, the oidc-provider
peer as the Verifier (short access tokens, so grants refresh many times during the test). The
callers use one gRPC channel over both replicas (round_robin, wait_for_ready): a replica being
restarted is left out, so a rolling restart has no window in which a call fails.

1. key A serves; a user grant G1 is created with it; callers loop GetAccessToken on G1;
2. ``broker keys rotate prepare`` makes key B in the same token; ``rotate status`` pre-flights
   B at the AS: "unknown_client" until the operator registers B at the Verifier
   (``DevStack.register_client``: the TSL entry), "client_known" after;
3. ``rotate activate``; each replica in turn is restarted with ``[key] uri`` = B (it then also
   opens A, the retiring identity, and keeps refreshing G1 with it);
4. a new login creates G2 with client_id B; callers loop on G2 too;
5. the peer's log: every refresh of G1 is client A with an assertion signed by A, every
   refresh of G2 client B signed by B; G1 refreshed through the restarted replicas too;
6. ``rotate retire`` refuses while G1 needs A; ``--force`` ends G1 (from the moment the command
   marks it, before it destroys key A and returns: a replica's status poll may refuse G1 before
   the command has returned, seen under load): it is never refreshed
   again, and once a token issued before the retirement would have expired every call is
   FAILED_PRECONDITION (reauthorization required, key_retired); until then a replica may still
   serve the access token it caches, until its next status poll ([tokens] status_poll_interval,
   2 s; seen: 0-3 such calls). Key A is gone from the token, G2
   keeps being served; the audit chain verifies.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from broker.keys.didkey import public_key_from_did
from broker.server.gen.broker.v1 import broker_pb2
from devtools.stack import DevStack, StackError
from tests.stacks import RPC_TIMEOUT, Stacks, grant_of, login, start_with_retry

ACCESS_TOKEN_TTL = 8  # seconds: grants refresh every few seconds during the test
REFRESH_THRESHOLD = 5.0
MIN_SERVE_TTL = 2.0
BACKGROUND_INTERVAL = 1.0
CALL_PAUSE = 0.1  # between two calls of one caller thread
WAIT = 120.0  # bound on every wait for something to happen (a busy machine is slow, not stuck)
NEW_KEY_LABEL = "client-b"


# --- callers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    at: float
    grant: str
    code: str
    detail: str


@dataclass
class Callers:
    """One thread per grant looping GetAccessToken over a channel to every replica."""

    stacks: list[DevStack]
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def channel(self) -> grpc.Channel:
        first = self.stacks[0]
        target = "ipv4:" + ",".join(f"127.0.0.1:{s.grpc_port}" for s in self.stacks)
        return grpc.secure_channel(
            target,
            first.channel_credentials(),
            options=[
                ("grpc.lb_policy_name", "round_robin"),
                ("grpc.ssl_target_name_override", "localhost"),
            ],
        )

    def add(self, name: str, grant_id: str) -> None:
        thread = threading.Thread(target=self._loop, args=(name, grant_id), daemon=True)
        self.threads.append(thread)
        thread.start()

    def _loop(self, name: str, grant_id: str) -> None:
        request = broker_pb2.GetAccessTokenRequest(grant_id=grant_id)
        with self.channel() as channel:
            stub = self.stacks[0].stub(channel)
            while not self.stop.is_set():
                try:
                    stub.GetAccessToken(request, timeout=RPC_TIMEOUT, wait_for_ready=True)
                    code, detail = "OK", ""
                except grpc.RpcError as exc:
                    code, detail = exc.code().name, str(exc.details())
                with self.lock:
                    self.calls.append(Call(time.time(), name, code, detail))
                self.stop.wait(CALL_PAUSE)

    def of(self, name: str, since: float = 0.0) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.grant == name and c.at >= since]

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=RPC_TIMEOUT + 5)


# --- the peer's log -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Refresh:
    at: float  # seconds (the peer logs ms)
    status: int
    client_id: str
    assertion: str
    header: dict[str, Any]
    claims: dict[str, Any]


def refresh_chains(requests: list[dict[str, Any]]) -> list[list[Refresh]]:
    """The refreshes of each grant, in login order: a grant's chain starts at its code
    exchange and follows each refresh token the peer issued in it."""
    chains: list[tuple[set[str], list[Refresh]]] = []
    for r in requests:
        issued = r.get("issued") or {}
        if r.get("grant_type") == "authorization_code" and r.get("status") == 200:
            chains.append(({issued["refresh_token"]}, []))
            continue
        if r.get("grant_type") != "refresh_token":
            continue
        form = r["form"]
        for tokens, refreshes in chains:
            if form.get("refresh_token") in tokens:
                refreshes.append(
                    Refresh(
                        at=r["at"] / 1000.0,
                        status=r["status"],
                        client_id=form["client_id"],
                        assertion=form["client_assertion"],
                        header=r["assertion"]["header"],
                        claims=r["assertion"]["claims"],
                    )
                )
                if issued.get("refresh_token"):
                    tokens.add(issued["refresh_token"])
    return [refreshes for _, refreshes in chains]


def signed_by(jws: str, did: str) -> bool:
    """Whether the compact ES256 JWS verifies with the public key of ``did``."""
    from base64 import urlsafe_b64decode

    def b64(part: str) -> bytes:
        return urlsafe_b64decode(part + "=" * (-len(part) % 4))

    head, payload, sig = jws.split(".")
    raw = b64(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key = public_key_from_did(did)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(der, f"{head}.{payload}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def assert_refreshed_as(refreshes: list[Refresh], did: str) -> None:
    for r in refreshes:
        assert r.status == 200, r
        assert r.client_id == did
        assert r.claims["iss"] == r.claims["sub"] == did
        assert str(r.header["kid"]).split("#")[0] == did
        assert signed_by(r.assertion, did), "assertion not signed by the grant's own key"


def failures(calls: list[Call], *stacks: DevStack) -> str:
    """The failed calls (time, code, details) and the replicas' warnings and errors, for an
    assertion message: a failure under load says what the call hit."""
    lines = [repr(c) for c in calls if c.code != "OK"]
    for stack in stacks:
        logged = stack.broker_log().splitlines()
        lines += [f"{stack.log_name}: {x}" for x in logged if '"level":"INFO"' not in x][-20:]
    return "\n".join(lines)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.5)


def rotate(stack: DevStack, step: str, *argv: str) -> dict[str, Any]:
    out = stack.cli(
        "keys",
        "rotate",
        step,
        "--config",
        str(stack.config_path),
        "--json",
        "--operator",
        "e2e",
        *argv,
    )
    doc: dict[str, Any] = json.loads(out)
    return doc


def restart(stack: DevStack) -> None:
    assert stack.stop_broker() == 0, stack.broker_log()[-3000:]
    start_with_retry(stack)


# --- the test -----------------------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.postgres
@pytest.mark.softhsm
@pytest.mark.slow
def test_rotation_while_callers_keep_getting_tokens_for_both_identities(
    stacks: Stacks, pg_schema: tuple[str, str]
) -> None:
    dsn, schema = pg_schema
    a = stacks.up(
        "a",
        store_kind="postgres",
        store_dsn=dsn,
        store_schema=schema,
        access_token_ttl=ACCESS_TOKEN_TTL,
        refresh_threshold=REFRESH_THRESHOLD,
        min_serve_ttl=MIN_SERVE_TTL,
        background_interval=BACKGROUND_INTERVAL,
    )
    r = stacks.replica(a, "r")
    start_with_retry(r)
    did_a, uri_a = a.did, a.key_uri
    uri_b = uri_a.replace("object=client;id=%01", f"object={NEW_KEY_LABEL};id=%03")
    assert uri_b != uri_a

    callers = Callers([a, r])
    try:
        g1 = login(a, label="g1")
        assert grant_of(a, g1).client_id == did_a
        callers.add("G1", g1)
        wait_until(lambda: len(refresh_chains(a.peer.token_requests())[0]) >= 2, "G1 refreshes")

        # prepare: key B in the same token, identity recorded as prepared.
        prepared = rotate(a, "prepare", "--key", uri_b)
        did_b = prepared["prepared"]
        assert did_b != did_a and did_b.startswith("did:key:")
        states = {i["did"]: i["state"] for i in prepared["identities"]}
        assert states == {did_a: "active", did_b: "prepared"}

        # status: the Verifier does not know B until the operator registers it.
        assert rotate(a, "status")["preflight"]["result"] == "unknown_client"
        a.register_client(did_b)
        assert rotate(a, "status")["preflight"]["result"] == "client_known"

        activated = rotate(a, "activate")
        assert activated["activated"] == did_b
        states = {i["did"]: i["state"] for i in activated["identities"]}
        assert states == {did_a: "retiring", did_b: "active"}

        # Rolling restart with [key] uri = B: one replica at a time, callers never see a gap.
        for stack in (r, a):
            stack.use_key(uri_b, did_b)
            restart(stack)
            assert f"serving grants of identity {did_a} too" in stack.broker_log()
        restarted = time.time()

        g2 = login(a, label="g2")
        assert grant_of(a, g2).client_id == did_b
        callers.add("G2", g2)

        def refreshed_after_restart() -> bool:
            chains = refresh_chains(a.peer.token_requests())
            return len(chains) == 2 and all(
                sum(1 for x in chain if x.at > restarted) >= 2 for chain in chains
            )

        wait_until(refreshed_after_restart, "G1 and G2 refreshes after the restart")

        chain_g1, chain_g2 = refresh_chains(a.peer.token_requests())
        assert_refreshed_as(chain_g1, did_a)
        assert_refreshed_as(chain_g2, did_b)

        # No failed call at all so far, for either grant.
        before_retire = time.time()
        so_far = callers.of("G1") + callers.of("G2")
        failed = Counter((c.grant, c.code) for c in so_far if c.code != "OK")
        assert not failed, (failed, failures(so_far, a, r))
        assert len(callers.of("G1")) > 50 and len(callers.of("G2")) > 10

        # retire refuses while G1 still needs key A; --force ends it.
        with pytest.raises(StackError, match="still belong to"):
            rotate(a, "retire")
        forcing = time.time()  # G1 may be refused from here on: the CLI ends it before it
        retired = rotate(a, "retire", "--force", "--yes")  # destroys key A and returns
        retired_at = time.time()
        assert retired["retired"] == did_a
        assert retired["key_destroyed"] is True
        assert retired["grants_ended"] == [g1]

        wait_until(
            lambda: any(c.code == "FAILED_PRECONDITION" for c in callers.of("G1", retired_at)),
            "G1 to fail with FAILED_PRECONDITION",
        )
        # A replica still holding G1's last access token serves it until its next status
        # poll (each replica caches in its own process; the bound is 2 s, not asserted here);
        # none is served, on any replica, once a token issued before the retirement would
        # have expired.
        time.sleep(2 * ACCESS_TOKEN_TTL)  # G2 refreshes at least once more meanwhile
        after = callers.of("G1", retired_at + ACCESS_TOKEN_TTL)
        assert after, "no G1 call after the retirement window"
        assert {c.code for c in after} == {"FAILED_PRECONDITION"}, Counter(c.code for c in after)
        late_ok = [c for c in callers.of("G1", retired_at) if c.code == "OK"]
        grant = grant_of(a, g1)
        assert grant.status == broker_pb2.GRANT_STATUS_REAUTHORIZATION_REQUIRED
        assert grant.last_error == "key_retired"
    finally:
        callers.close()

    # G1 never refreshed after the retirement; G2 kept being served, refreshed as B.
    chain_g1, chain_g2 = refresh_chains(a.peer.token_requests())
    assert [x for x in chain_g1 if x.at > retired_at] == []
    assert any(x.at > retired_at for x in chain_g2)
    assert_refreshed_as(chain_g2, did_b)
    g2_codes = Counter(c.code for c in callers.of("G2"))
    assert set(g2_codes) == {"OK"}, (g2_codes, failures(callers.of("G2"), a, r))
    g1_calls = [c for c in callers.of("G1", 0.0) if c.at < forcing]
    g1_codes = Counter(c.code for c in g1_calls)
    assert set(g1_codes) == {"OK"}, (g1_codes, forcing, failures(g1_calls, a, r))
    print(
        f"rotation e2e: G1 {len(chain_g1)} refreshes as A, G2 {len(chain_g2)} as B; calls "
        f"before retire {sum(1 for c in callers.calls if c.at < before_retire)} all OK; "
        f"G1 refused {len(after)} times after retire + one token lifetime, "
        f"{len(late_ok)} cached token(s) served after retire"
    )

    # Key A is gone from the token; the audit chain (the ceremonies' log) verifies and holds
    # every rotation step, the refused retire included.
    listed = a.cli("keys", "list", "--key", uri_b, "--json")
    assert f'"{NEW_KEY_LABEL}"' in listed and '"client"' not in listed
    verified = json.loads(a.cli("keys", "audit-verify", "--json"))
    assert verified["ok"] is True, verified
    actions = [json.loads(line)["action"] for line in a.audit_log.read_text().splitlines()]
    steps = [x for x in actions if x.startswith("keys.rotate.")]
    assert [x for x in steps if not x.endswith(".intent")] == [
        "keys.rotate.prepare",
        "keys.rotate.status",
        "keys.rotate.status",
        "keys.rotate.activate",
        "keys.rotate.retire",
        "keys.rotate.retire",
    ], steps
