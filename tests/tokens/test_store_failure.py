"""G04: the store fails to write a new refresh token (disk full, read-only, I/O error).

The memory store with ``fail_next`` (:mod:`tests.tokens.stores.faulty_store`) and a SQLite store whose
connection raises ``sqlite3.OperationalError`` on writes stand in for ENOSPC / EROFS / EIO.
Expected: the result is kept in memory and written before the AS is asked again, health is
DEGRADED meanwhile, an emergency sealed file survives a shutdown or a crash, and the AS only ever
sees the NEW refresh token once it was issued.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.errors import StoreError
from broker.keys.soft import SoftSealer
from broker.oauth.types import TokenSet
from broker.tokens.broker import TokenBroker
from broker.tokens.emergency import EmergencyFileError, EmergencyVault, file_name
from broker.tokens.model import Grant
from broker.tokens.settings import Reporting, Seams
from broker.tokens.stores.base import GrantStore
from broker.tokens.stores.memory import MemoryGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.fakes import FakeRefresher, token_set
from tests.tokens.stores.faulty_store import FaultyMemoryStore

LIFETIME = 3600.0
PAST_BACKOFF = 20.0  # beyond the first back-off (5 s + 10 % jitter)


class RecordingPersistence:
    def __init__(self) -> None:
        self.changes: list[frozenset[str]] = []

    def unpersisted_changed(self, grant_ids: frozenset[str]) -> None:
        self.changes.append(grant_ids)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sealer() -> SoftSealer:
    return SoftSealer()


def make_broker(
    store: GrantStore,
    refresher: FakeRefresher,
    clock: FakeClock,
    vault: EmergencyVault | None,
    persistence: RecordingPersistence | None = None,
) -> TokenBroker:
    return TokenBroker(
        store,
        refresher,
        clock,
        seams=Seams(rng=random.Random(4)),
        emergency=vault,
        reporting=Reporting(persistence=persistence),
    )


async def add(broker: TokenBroker, clock: FakeClock) -> Grant:
    return await broker.add_grant(
        token_set(clock, lifetime=LIFETIME),
        label="svc",
        issuer="https://as.example",
        client_id="did:key:zClient",
    )


async def fail_one_rotation(broker: TokenBroker, grant: Grant, clock: FakeClock) -> None:
    """Expire the token and run a refresh whose result the store refuses."""
    clock.advance(LIFETIME - 1)
    with pytest.raises(StoreError):
        await broker.get_access_token(grant.grant_id)


# --- memory store (FaultyMemoryStore.fail_next) ------------------------------------------------


async def test_g04_unpersisted_result_degrades_then_is_written_before_asking_the_as_again(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path
) -> None:
    store = FaultyMemoryStore(clock)
    refresher = FakeRefresher(clock)
    persistence = RecordingPersistence()
    broker = make_broker(
        store, refresher, clock, EmergencyVault(tmp_path, sealer, clock), persistence
    )
    grant = await add(broker, clock)
    store.fail_next("rotate", StoreError("database or disk is full"))
    await fail_one_rotation(broker, grant, clock)
    assert broker.degraded
    assert broker.unpersisted_grants == {grant.grant_id}
    assert persistence.changes == [frozenset({grant.grant_id})]
    assert (await store.get(grant.grant_id)).refresh_token == "rt-0"
    # Written at once: a crash from here on does not lose rt-1.
    assert (tmp_path / file_name(grant.grant_id)).exists()

    clock.advance(PAST_BACKOFF)
    token = await broker.get_access_token(grant.grant_id)

    # The kept result is written and served; the AS is not asked again.
    assert token.access_token == "at-1"
    assert refresher.used == ["rt-0"]
    stored = await store.get(grant.grant_id)
    assert (stored.refresh_token, stored.version) == ("rt-1", 2)
    assert not broker.degraded
    assert persistence.changes[-1] == frozenset()
    assert not (tmp_path / file_name(grant.grant_id)).exists()

    clock.advance(LIFETIME - 1)
    await broker.get_access_token(grant.grant_id)
    assert refresher.used == ["rt-0", "rt-1"]  # rt-0 was never sent again


async def test_g04_store_still_failing_never_falls_back_to_the_old_refresh_token(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path
) -> None:
    store = FaultyMemoryStore(clock)
    refresher = FakeRefresher(clock)
    broker = make_broker(store, refresher, clock, EmergencyVault(tmp_path, sealer, clock))
    grant = await add(broker, clock)
    store.fail_next("rotate", StoreError("disk I/O error"))
    await fail_one_rotation(broker, grant, clock)
    for _ in range(3):
        store.fail_next("rotate", StoreError("disk I/O error"))
        clock.advance(PAST_BACKOFF * 20)
        with pytest.raises(StoreError):
            await broker.get_access_token(grant.grant_id)
    assert refresher.used == ["rt-0"]
    assert broker.degraded


async def test_g04_warm_tokens_are_served_while_degraded(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path
) -> None:
    store = FaultyMemoryStore(clock)
    refresher = FakeRefresher(clock)
    broker = make_broker(store, refresher, clock, EmergencyVault(tmp_path, sealer, clock))
    grant = await add(broker, clock)
    store.fail_next("rotate", StoreError("database or disk is full"))
    await fail_one_rotation(broker, grant, clock)
    other = await add(broker, clock)
    served = await broker.get_access_token(other.grant_id)
    assert served.access_token == "at-0"
    assert broker.unpersisted_grants == {grant.grant_id}


async def test_g04_stop_writes_a_sealed_0600_file_and_restart_imports_it(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path
) -> None:
    store = FaultyMemoryStore(clock)
    vault = EmergencyVault(tmp_path / "emergency", sealer, clock)
    refresher = FakeRefresher(clock)
    broker = make_broker(store, refresher, clock, vault)
    await broker.start()
    grant = await add(broker, clock)
    store.fail_next("rotate", StoreError("read-only file system"))
    await fail_one_rotation(broker, grant, clock)
    path = vault.path_for(grant.grant_id)
    path.unlink()  # only the shutdown write remains to be tested
    await broker.stop()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert b"rt-1" not in raw and b"at-1" not in raw
    assert json.loads(raw)["grant_id"] == grant.grant_id

    restarted_refresher = FakeRefresher(clock)
    restarted_refresher.calls = 10
    restarted = make_broker(store, restarted_refresher, clock, vault)
    await restarted.start()
    try:
        stored = await store.get(grant.grant_id)
        assert (stored.refresh_token, stored.access_token) == ("rt-1", "at-1")
        assert not path.exists()
        assert not restarted.degraded
        served = await restarted.get_access_token(grant.grant_id)
        assert served.access_token == "at-1"  # the result the AS issued is served, not redone
        clock.advance(LIFETIME - 1)
        await restarted.get_access_token(grant.grant_id)
        assert restarted_refresher.used == ["rt-1"]  # the AS sees the NEW token only
    finally:
        await restarted.stop()


async def test_g04_crash_after_failed_write_recovers_from_the_eager_file(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path
) -> None:
    """No stop() (kill -9): the file written when the rotation failed is enough, and the
    intent record left in the store does not lead to a G02 refresh with the old token."""
    store = FaultyMemoryStore(clock)
    vault = EmergencyVault(tmp_path, sealer, clock)
    broker = make_broker(store, FakeRefresher(clock), clock, vault)
    grant = await add(broker, clock)
    store.fail_next("rotate", StoreError("disk I/O error"))
    await fail_one_rotation(broker, grant, clock)
    assert (await store.get(grant.grant_id)).refresh_started_at is not None

    refresher = FakeRefresher(clock)
    restarted = make_broker(store, refresher, clock, vault)
    assert await restarted.import_emergency() == [grant.grant_id]
    assert await restarted.recover_interrupted() == []
    assert refresher.used == []
    assert (await store.get(grant.grant_id)).refresh_token == "rt-1"


async def test_g04_restart_while_store_still_fails_keeps_the_record_and_the_file(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path
) -> None:
    store = FaultyMemoryStore(clock)
    vault = EmergencyVault(tmp_path, sealer, clock)
    broker = make_broker(store, FakeRefresher(clock), clock, vault)
    grant = await add(broker, clock)
    store.fail_next("rotate", StoreError("disk I/O error"))
    await fail_one_rotation(broker, grant, clock)
    await broker.stop()

    refresher = FakeRefresher(clock)
    persistence = RecordingPersistence()
    restarted = make_broker(store, refresher, clock, vault, persistence)
    store.fail_next("rotate", StoreError("disk I/O error"))
    assert await restarted.import_emergency() == []
    assert restarted.unpersisted_grants == {grant.grant_id}
    assert persistence.changes == [frozenset({grant.grant_id})]
    assert vault.path_for(grant.grant_id).exists()

    token = await restarted.get_access_token(grant.grant_id)  # store healthy again
    assert token.access_token == "at-1"
    assert refresher.used == []
    assert (await store.get(grant.grant_id)).refresh_token == "rt-1"
    assert not vault.path_for(grant.grant_id).exists()
    assert not restarted.degraded


async def test_g04_obsolete_emergency_file_is_dropped_not_imported(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path
) -> None:
    store = MemoryGrantStore(clock)
    vault = EmergencyVault(tmp_path, sealer, clock)
    broker = make_broker(store, FakeRefresher(clock), clock, vault)
    grant = await add(broker, clock)
    newer = TokenSet(
        access_token="at-x",
        token_type="Bearer",
        expires_at=clock.now() + LIFETIME,
        received_at=clock.now(),
        scope="openid",
        refresh_token="rt-x",
    )
    await store.rotate(grant.grant_id, newer, expected_version=1)  # another replica: version 2
    vault.write(grant.grant_id, 1, token_set(clock))
    assert await broker.import_emergency() == []
    assert (await store.get(grant.grant_id)).refresh_token == "rt-x"
    assert not vault.path_for(grant.grant_id).exists()


async def test_g04_tampered_or_misplaced_file_is_refused_and_kept(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryGrantStore(clock)
    vault = EmergencyVault(tmp_path, sealer, clock)
    broker = make_broker(store, FakeRefresher(clock), clock, vault)
    grant = await add(broker, clock)
    other = await add(broker, clock)
    path = vault.write(grant.grant_id, 1, token_set(clock))
    doc = json.loads(path.read_text())
    doc["grant_id"] = other.grant_id  # moved to another grant: the AAD no longer matches
    misplaced = vault.path_for(other.grant_id)
    misplaced.write_text(json.dumps(doc))
    misplaced.chmod(0o600)
    tampered = dict(doc, grant_id=grant.grant_id, sealed=doc["sealed"][:-8] + "AAAAAAA=")
    path.write_text(json.dumps(tampered))

    with caplog.at_level(logging.ERROR, logger="broker.tokens.broker"):
        assert await broker.import_emergency() == []
    assert path.exists() and misplaced.exists()
    assert sum("not imported (kept)" in r.getMessage() for r in caplog.records) == 2
    assert (await store.get(grant.grant_id)).refresh_token == "rt-0"
    with pytest.raises(EmergencyFileError):
        vault.read(misplaced)


def test_g04_vault_refuses_a_group_readable_file_and_other_sealing_keys(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path
) -> None:
    vault = EmergencyVault(tmp_path, sealer, clock)
    path = vault.write("g-1", 4, token_set(clock))
    record = vault.read(path)
    assert (record.grant_id, record.version, record.tokens.refresh_token) == ("g-1", 4, "rt-0")
    assert "rt-0" not in repr(record)
    with pytest.raises(EmergencyFileError):
        EmergencyVault(tmp_path, SoftSealer(), clock).read(path)
    os.chmod(path, 0o640)
    with pytest.raises(EmergencyFileError):
        vault.read(path)


def test_g04_vault_write_failure_is_a_typed_error(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(EmergencyFileError) as info:
        EmergencyVault(blocker, sealer, clock).write("g-1", 1, token_set(clock))
    assert "rt-0" not in str(info.value)


async def test_g04_without_a_vault_shutdown_reports_the_loss(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyMemoryStore(clock)
    broker = make_broker(store, FakeRefresher(clock), clock, None)
    grant = await add(broker, clock)
    store.fail_next("rotate", StoreError("disk I/O error"))
    await fail_one_rotation(broker, grant, clock)
    with caplog.at_level(logging.CRITICAL, logger="broker.tokens.broker"):
        await broker.stop()
    assert any(grant.grant_id in r.getMessage() for r in caplog.records)
    assert all("rt-1" not in r.getMessage() for r in caplog.records)


# --- SQLite with a failing connection -----------------------------------------------------------


class FailingWrites:
    """Wraps the store's sqlite3.Connection: rotations raise OperationalError while armed."""

    def __init__(self, conn: sqlite3.Connection, message: str) -> None:
        self._conn = conn
        self._message = message
        self.armed = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        # Only a rotation writes the refresh_token column (mark_refresh_started does not).
        if self.armed and sql.startswith("UPDATE grants") and "refresh_token" in sql:
            raise sqlite3.OperationalError(self._message)
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture(params=["disk I/O error", "database or disk is full"])
def sqlite_error(request: pytest.FixtureRequest) -> Iterator[str]:
    yield str(request.param)


async def test_g04_sqlite_write_error_restart_recovers_the_new_refresh_token(
    clock: FakeClock, sealer: SoftSealer, tmp_path: Path, sqlite_error: str
) -> None:
    db = str(tmp_path / "grants.db")
    vault = EmergencyVault(tmp_path / "emergency", sealer, clock)
    store = await SqliteGrantStore.connect(db, sealer, clock)
    refresher = FakeRefresher(clock)
    broker = make_broker(store, refresher, clock, vault)
    await broker.start()
    grant = await add(broker, clock)
    failing = FailingWrites(store._conn, sqlite_error)  # type: ignore[arg-type]
    store._conn = failing  # type: ignore[assignment]
    try:
        await fail_one_rotation(broker, grant, clock)
        assert broker.degraded
        await broker.stop()
    finally:
        failing.armed = False
        await store.close()
    assert vault.path_for(grant.grant_id).exists()

    reopened = await SqliteGrantStore.connect(db, sealer, clock)
    after = FakeRefresher(clock)
    after.calls = 100
    restarted = make_broker(reopened, after, clock, vault)
    try:
        await restarted.start()
        stored = await reopened.get(grant.grant_id)
        assert (stored.refresh_token, stored.version) == ("rt-1", 2)
        assert not vault.path_for(grant.grant_id).exists()
        clock.advance(LIFETIME - 1)
        token = await restarted.get_access_token(grant.grant_id)
        assert token.access_token == "at-101"
        assert refresher.used == ["rt-0"]
        assert after.used == ["rt-1"]  # the AS sees the NEW refresh token only
    finally:
        await restarted.stop()
        await reopened.close()
