"""The runtime audit trail (TEST-CATALOGUE H01, A05, B10, E05): each grant lifecycle event is
written once with the right fields into the hash-chained log, no secret reaches the file, and a
blocked or failing single sink makes new grants fail closed (UNAVAILABLE, nothing stored)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from broker.audit import verify_chain
from broker.audit.events import AuditAction, AuditEvent, event_from_record, record_fields
from broker.audit.sinks import AuditSink, FanoutAuditSink, FileAuditSink
from broker.audit.trail import AuditTrail
from broker.errors import (
    AuditUnavailable,
    InvalidArgument,
    InvalidGrant,
    ReauthorizationRequired,
    StoreError,
    TokenValidationError,
)
from broker.keys.soft import SoftKeyStore
from broker.login import LoginService, LoginSettings, LoginState
from broker.server.errors import to_status
from broker.server.gen.broker.v1 import broker_pb2 as pb
from broker.server.policy import Policy
from broker.server.servicer import TokenBrokerServicer
from broker.tokens.broker import TokenBroker
from broker.tokens.settings import Reporting
from broker.tokens.stores.logins import MemoryLoginStore
from tests.clock import FakeClock
from tests.login.fakes import BASE_URL, FakeClient, client_config
from tests.server.fakes import FakeBroker, FakeLogins
from tests.server.pki import Ca
from tests.tokens.fakes import FakeGrantStore, FakeRefresher, token_set

CODE = "code-Zq9xSecretAuthCode"  # FakeClient issues at-<code> / rt-<code>
TIMEOUT = 0.3


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def events(path: Path) -> list[AuditEvent]:
    return [event_from_record(r) for r in records(path)]


class Recorder:
    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []

    def audit_failed(self, sink: str, action: str) -> None:
        self.failed.append((sink, action))


class NeverReturns:
    """A sink whose write never returns (an unresponsive socket)."""

    name = "stuck"

    async def record(self, event: AuditEvent) -> None:
        await asyncio.Event().wait()


class Stack:
    def __init__(self, sink: AuditSink, clock: FakeClock) -> None:
        self.clock = clock
        self.store = FakeGrantStore(clock)
        self.refresher = FakeRefresher(clock)
        self.observer = Recorder()
        self.trail = AuditTrail(sink, timeout=TIMEOUT * 3, observer=self.observer)
        self.broker = TokenBroker(
            self.store, self.refresher, clock, reporting=Reporting(audit=self.trail)
        )
        keys = SoftKeyStore()
        keys.generate("client", b"\x01")
        signer = keys.signer("client")
        self.client = FakeClient()
        self.logins = LoginService(
            self.client,
            client_config(signer.kid),
            signer,
            self.broker,
            clock,
            settings=LoginSettings(BASE_URL),
            audit=self.trail,
        )
        self.secrets: list[str] = [CODE, "at-" + CODE, "rt-" + CODE]

    async def login(self, label: str = "crm") -> Any:
        view = await self.logins.start(label=label)
        assert view.authorization_url is not None
        q = parse_qs(urlsplit(view.authorization_url).query)
        state = q["state"][0]
        self.secrets += [state, view.authorization_url]
        return await self.logins.complete(code=CODE, state=state, iss=client_config("x").issuer)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def file_sink(log_path: Path, clock: FakeClock) -> Iterator[FileAuditSink]:
    sink = FileAuditSink(log_path, clock=clock, timeout=TIMEOUT, operator="svc", host="h1")
    yield sink
    sink.close()


@pytest.fixture
def stack(file_sink: FileAuditSink, clock: FakeClock) -> Stack:
    return Stack(file_sink, clock)


def assert_no_secret(path: Path, secrets: list[str]) -> None:
    text = path.read_text()
    for secret in secrets:
        assert secret not in text
    assert "eyJ" not in text


# --- each event once, with the right fields ---------------------------------------------------


async def test_h01_grant_created_written_once_before_the_grant_is_stored(
    stack: Stack, log_path: Path
) -> None:
    view = await stack.login()
    assert view.state is LoginState.COMPLETED
    (event,) = events(log_path)
    assert event == AuditEvent(
        AuditAction.GRANT_CREATED,
        "ok",
        grant_id=view.grant_id,
        label="crm",
        subject="did:key:user",
    )
    (raw,) = records(log_path)
    assert (raw["operator"], raw["host"], raw["did"]) == ("svc", "h1", "did:key:user")
    assert stack.store.log[0][:2] == ("create", view.grant_id)
    assert verify_chain(log_path).ok
    assert_no_secret(log_path, stack.secrets)


async def test_a05_dead_grant_writes_exactly_one_reauthorization_event(
    stack: Stack, clock: FakeClock, log_path: Path
) -> None:
    grant = await stack.broker.add_grant(
        token_set(clock), label="crm", issuer="https://as", client_id="did:key:zC"
    )
    clock.advance(4000)
    stack.refresher.errors = [InvalidGrant(status_code=400)]
    for _ in range(3):
        with pytest.raises(ReauthorizationRequired):
            await stack.broker.get_access_token(grant.grant_id)
    assert stack.refresher.calls == 1
    dead = [e for e in events(log_path) if e.action is AuditAction.GRANT_REAUTHORIZATION_REQUIRED]
    assert dead == [
        AuditEvent(
            AuditAction.GRANT_REAUTHORIZATION_REQUIRED,
            "error",
            grant_id=grant.grant_id,
            label="crm",
            subject="did:key:zUser",
            reason="invalid_grant",
        )
    ]
    assert verify_chain(log_path).ok
    assert_no_secret(log_path, ["at-0", "rt-0"])


async def test_b10_rejected_refresh_writes_one_event_and_stores_nothing(
    stack: Stack, clock: FakeClock, log_path: Path
) -> None:
    grant = await stack.broker.add_grant(
        token_set(clock), label="crm", issuer="https://as", client_id="did:key:zC"
    )
    clock.advance(4000)
    stack.refresher.errors = [TokenValidationError("id_token sub differs", reason="token_invalid")]
    for _ in range(2):  # the second call fails fast during the back-off: no second event
        with pytest.raises(TokenValidationError):
            await stack.broker.get_access_token(grant.grant_id)
    rejected = [e for e in events(log_path) if e.action is AuditAction.TOKEN_REFRESH_REJECTED]
    assert [(e.grant_id, e.reason, e.outcome) for e in rejected] == [
        (grant.grant_id, "token_invalid", "error")
    ]
    assert "rotate" not in stack.store.ops(grant.grant_id)
    assert stack.store.grants[grant.grant_id].access_token == "at-0"


async def test_b10_failed_code_exchange_writes_one_login_failed_and_no_grant(
    stack: Stack, log_path: Path
) -> None:
    stack.client.exchange_error = TokenValidationError("bad nonce", reason="token_invalid")
    with pytest.raises(TokenValidationError):
        await stack.login()
    assert events(log_path) == [
        AuditEvent(AuditAction.LOGIN_FAILED, "error", label="crm", reason="token_invalid")
    ]
    assert stack.store.grants == {}
    assert_no_secret(log_path, stack.secrets)


async def test_revocation_writes_grant_revoked(
    stack: Stack, clock: FakeClock, log_path: Path
) -> None:
    grant = await stack.broker.add_grant(
        token_set(clock), label="crm", issuer="https://as", client_id="did:key:zC"
    )
    await stack.broker.revoke_grant(grant.grant_id)
    last = events(log_path)[-1]
    assert (last.action, last.grant_id, last.outcome, last.reason) == (
        AuditAction.GRANT_REVOKED,
        grant.grant_id,
        "ok",
        "revoked",
    )
    assert verify_chain(log_path).ok


async def test_store_failure_after_the_write_ahead_record_withdraws_it(
    stack: Stack, log_path: Path
) -> None:
    stack.store.fail["create"] = StoreError("disk full")
    with pytest.raises(StoreError):
        await stack.login()
    created_ok, created_error, failed = events(log_path)
    assert (created_ok.action, created_ok.outcome) == (AuditAction.GRANT_CREATED, "ok")
    assert (created_error.action, created_error.outcome, created_error.reason) == (
        AuditAction.GRANT_CREATED,
        "error",
        "store",
    )
    assert created_error.grant_id == created_ok.grant_id
    assert (failed.action, failed.reason) == (AuditAction.LOGIN_FAILED, "store")
    assert stack.store.grants == {}


# --- E05 ---------------------------------------------------------------------------------------


class _Aborted(Exception):
    pass


_CALLER_CA = Ca("caller-ca")


class FakeContext:
    def __init__(self, uri: str) -> None:
        self._pem = _CALLER_CA.issue(uris=(uri,)).cert_pem  # the caller is named by its cert
        self.code: Any = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]}

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: Any, message: str, trailing_metadata: Any = None) -> None:
        self.code = code
        raise _Aborted(message)


class _Policy:
    def __init__(self, policy: Policy) -> None:
        self.current = policy


async def test_e05_denied_caller_is_audited_with_identity_and_method_only(
    file_sink: FileAuditSink, log_path: Path
) -> None:
    policy = Policy.parse('[identities."spiffe://corp/crm"]\nmethods = ["*"]\ngrants = ["g-1"]\n')
    servicer = TokenBrokerServicer(
        broker=FakeBroker(),
        logins=FakeLogins(),
        policy=_Policy(policy),
        audit=AuditTrail(file_sink, timeout=TIMEOUT * 3),
    )
    for caller, grant_id in (("spiffe://corp/other", "g-1"), ("spiffe://corp/crm", "g-secret-9")):
        context = FakeContext(caller)
        with pytest.raises(_Aborted, match=r"^permission denied$"):
            await servicer.GetAccessToken(pb.GetAccessTokenRequest(grant_id=grant_id), context)
        assert context.code is grpc.StatusCode.PERMISSION_DENIED
    denied = events(log_path)
    assert [(e.action, e.caller, e.method, e.grant_id, e.label) for e in denied] == [
        (AuditAction.CALLER_DENIED, "spiffe://corp/other", "GetAccessToken", None, None),
        (AuditAction.CALLER_DENIED, "spiffe://corp/crm", "GetAccessToken", None, None),
    ]
    assert "g-secret-9" not in log_path.read_text()  # no grant inventory
    assert verify_chain(log_path).ok


# --- H01: fail closed --------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock_held(path: Path) -> Iterator[None]:
    """Another writer holds the audit log's lock and never lets go (until the block ends)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def test_h01_blocked_file_fails_the_login_unavailable_and_stores_nothing(
    stack: Stack, file_sink: FileAuditSink, log_path: Path
) -> None:
    with file_lock_held(log_path), pytest.raises(AuditUnavailable) as caught:
        await stack.login()
    assert caught.value.retryable
    assert to_status(caught.value)[0] is grpc.StatusCode.UNAVAILABLE
    assert stack.store.grants == {}
    assert stack.store.log == []
    assert stack.observer.failed == [("file:audit.jsonl", "grant.created")]
    # The abandoned write never lands, even once the lock is free: the next record (same
    # single worker, so it runs after the abandoned one) is the first in the file.
    await file_sink.record(AuditEvent(AuditAction.LOGIN_FAILED, "error", reason="probe"))
    assert [e.action for e in events(log_path)] == [AuditAction.LOGIN_FAILED]
    assert verify_chain(log_path).ok


async def test_h01_sink_that_never_returns_fails_the_login_within_the_bound(
    clock: FakeClock,
) -> None:
    stack = Stack(NeverReturns(), clock)
    with pytest.raises(AuditUnavailable):
        await stack.login()
    assert stack.store.grants == {}
    assert stack.trail.failures == 1


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody (root included) can create files in: immutable (chattr +i), or
    mode 0500 when not root."""
    directory = tmp_path / "ro"
    directory.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip("cannot make a directory read-only for root (no chattr +i here)")
        try:
            yield directory
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o500)
        try:
            yield directory
        finally:
            directory.chmod(0o700)


async def test_h01_read_only_directory_fails_the_login_and_stores_nothing(
    clock: FakeClock, read_only_dir: Path
) -> None:
    sink = FileAuditSink(read_only_dir / "audit.jsonl", clock=clock, timeout=TIMEOUT)
    try:
        stack = Stack(sink, clock)
        with pytest.raises(AuditUnavailable) as caught:
            await stack.login()
    finally:
        sink.close()
    assert isinstance(caught.value.__cause__, Exception)
    assert stack.store.grants == {}
    logins = stack.logins._store
    assert isinstance(logins, MemoryLoginStore)
    view = await stack.logins.get(next(iter(logins._logins)))
    assert (view.state, view.error) == (LoginState.FAILED, "audit_unavailable")


async def test_h01_fanout_any_with_one_failing_sink_still_serves(
    clock: FakeClock, log_path: Path, read_only_dir: Path
) -> None:
    good = FileAuditSink(log_path, clock=clock, timeout=TIMEOUT)
    bad = FileAuditSink(read_only_dir / "audit.jsonl", clock=clock, timeout=TIMEOUT)
    recorder = Recorder()
    try:
        fanout = FanoutAuditSink(
            [good, bad, NeverReturns()], require="any", timeout=TIMEOUT, observer=recorder
        )
        stack = Stack(fanout, clock)
        view = await stack.login()
        token = await stack.broker.get_access_token(view.grant_id)
    finally:
        good.close()
        bad.close()
    assert token.access_token == "at-" + CODE
    assert [e.action for e in events(log_path)] == [AuditAction.GRANT_CREATED]
    assert sorted(recorder.failed) == [
        ("file:audit.jsonl", "grant.created"),
        ("stuck", "grant.created"),
    ]
    assert stack.trail.failures == 0


async def test_h01_fanout_all_with_one_failing_sink_fails_closed(
    clock: FakeClock, log_path: Path, read_only_dir: Path
) -> None:
    good = FileAuditSink(log_path, clock=clock, timeout=TIMEOUT)
    bad = FileAuditSink(read_only_dir / "audit.jsonl", clock=clock, timeout=TIMEOUT)
    try:
        stack = Stack(FanoutAuditSink([good, bad], require="all", timeout=TIMEOUT), clock)
        with pytest.raises(AuditUnavailable):
            await stack.login()
    finally:
        good.close()
        bad.close()
    assert stack.store.grants == {}


async def test_best_effort_events_are_retried_once_then_counted(clock: FakeClock) -> None:
    class FailsOnce:
        name = "flaky"

        def __init__(self) -> None:
            self.calls = 0

        async def record(self, event: AuditEvent) -> None:
            self.calls += 1
            if self.calls == 1:
                raise AuditUnavailable("disk full")

    flaky = FailsOnce()
    recorder = Recorder()
    trail = AuditTrail(flaky, timeout=TIMEOUT, observer=recorder)
    event = AuditEvent(AuditAction.GRANT_REVOKED, "ok", grant_id="g-1", reason="revoked")
    assert await trail.note(event) is True
    assert (flaky.calls, trail.failures, recorder.failed) == (2, 1, [("flaky", "grant.revoked")])
    stuck = AuditTrail(NeverReturns(), timeout=TIMEOUT)
    assert await stuck.note(event) is False
    assert stuck.failures == 2


# --- the event value ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subject": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"},  # a JWT
        {"reason": "Not A Code"},
        {"label": "a\nb"},
        {"caller": "x" * 300},
        {"grant_id": ""},
    ],
)
def test_h01_event_refuses_secrets_and_malformed_values(kwargs: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        AuditEvent(AuditAction.LOGIN_FAILED, "error", **kwargs)


def test_event_record_mapping_round_trips_odd_identifiers() -> None:
    event = AuditEvent(
        AuditAction.CALLER_DENIED,
        "error",
        caller="spiffe://corp/a;b=c%d",
        method="GetGrant",
        reason="permission_denied",
    )
    record = record_fields(event)
    assert record["key_uri"] == "event:caller=spiffe%3A%2F%2Fcorp%2Fa%3Bb%3Dc%25d;method=GetGrant"
    assert event_from_record(record) == event
    with pytest.raises(InvalidArgument):
        event_from_record({"action": "keys.generate", "key_uri": "pkcs11:token=broker"})


def test_a_did_key_that_spells_eyj_is_an_accepted_subject() -> None:
    # base58btc can spell "eyJ" (how a JWT starts) inside a did:key: still a public identifier
    did = "did:key:zDnaeyJ7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY"
    event = AuditEvent(AuditAction.GRANT_CREATED, "ok", grant_id="g1", subject=did)
    assert event.subject == did
