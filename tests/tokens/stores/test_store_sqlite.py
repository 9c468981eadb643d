"""SQLite grant store: durability settings, file modes, sealing at rest, migrations, errors."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from broker.errors import ConfigError, KeyStoreError, StoreError, StoreUnusable
from broker.keys.soft import SoftSealer
from broker.tokens.stores.sqlite import SCHEMA_VERSION, SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import make_grant, make_tokens

SECRETS = (
    "AT-g-1-v1-plaintext",
    "RT-g-1-v1-plaintext",
    "AT-rotated-secret",
    "RT-rotated-secret",
    "alice.pii@example.org",
)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "grants.db")


async def test_g03_wal_and_synchronous_full_on_the_live_connection(db_path: str) -> None:
    store = await SqliteGrantStore.connect(db_path, SoftSealer(), FakeClock())
    try:
        settings = await store.storage_settings()
    finally:
        await store.close()
    assert settings["journal_mode"] == "wal"
    assert settings["synchronous"] == "2"  # FULL
    assert settings["schema_version"] == str(SCHEMA_VERSION)


async def test_g09_files_are_0600_and_hold_no_token_plaintext(db_path: str, tmp_path: Path) -> None:
    sealer = SoftSealer()
    old_umask = os.umask(0o022)  # a permissive umask must not leak into the file modes
    try:
        store = await SqliteGrantStore.connect(db_path, sealer, FakeClock())
        await store.create(make_grant())
        await store.rotate(
            "g-1",
            make_tokens("rotated-secret", refresh="RT-rotated-secret"),
            expected_version=1,
        )
        # Copy while open: the rows are still in the WAL, not yet checkpointed.
        assert os.path.getsize(db_path + "-wal") > 0
        copies = tmp_path / "copy"
        copies.mkdir()
        for suffix in ("", "-wal", "-shm"):
            path = db_path + suffix
            assert os.path.exists(path), suffix
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, suffix
            shutil.copy(path, copies / f"grants.db{suffix}")
        await store.close()
    finally:
        os.umask(old_umask)
    raw = b"".join(p.read_bytes() for p in sorted(copies.iterdir()))
    raw += Path(db_path).read_bytes()
    assert b"billing" in raw  # the scan does see clear columns
    for secret in SECRETS:
        assert secret.encode() not in raw, secret
    # The copy opens with the right key and gives the rotated tokens back.
    copy = await SqliteGrantStore.connect(str(copies / "grants.db"), sealer, FakeClock())
    try:
        got = await copy.get("g-1")
    finally:
        await copy.close()
    assert (got.access_token, got.refresh_token) == ("AT-rotated-secret", "RT-rotated-secret")


async def test_g09_existing_world_readable_file_is_tightened(db_path: str) -> None:
    store = await SqliteGrantStore.connect(db_path, SoftSealer(), FakeClock())
    await store.close()
    os.chmod(db_path, 0o644)
    store = await SqliteGrantStore.connect(db_path, SoftSealer(), FakeClock())
    await store.close()
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600


async def test_wrong_sealer_key_raises_keystore_error_on_read(db_path: str) -> None:
    store = await SqliteGrantStore.connect(db_path, SoftSealer(), FakeClock())
    await store.create(make_grant())
    await store.close()
    other = await SqliteGrantStore.connect(db_path, SoftSealer(), FakeClock())
    try:
        with pytest.raises(KeyStoreError) as info:
            await other.get("g-1")
        with pytest.raises(KeyStoreError):
            await other.list()
    finally:
        await other.close()
    text = str(info.value) + " ".join(getattr(info.value, "__notes__", []))
    assert "g-1" in text
    assert "plaintext" not in text


async def test_sealed_blob_moved_to_another_grant_does_not_open(db_path: str) -> None:
    sealer = SoftSealer()
    store = await SqliteGrantStore.connect(db_path, sealer, FakeClock())
    await store.create(make_grant("g-1"))
    await store.create(make_grant("g-2"))
    await store.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "UPDATE grants SET refresh_token = "
            "(SELECT refresh_token FROM grants WHERE grant_id = 'g-1') WHERE grant_id = 'g-2'"
        )
    conn.close()
    store = await SqliteGrantStore.connect(db_path, sealer, FakeClock())
    try:
        assert (await store.get("g-1")).refresh_token == "RT-g-1-v1-plaintext"
        with pytest.raises(KeyStoreError):
            await store.get("g-2")
    finally:
        await store.close()


async def test_migrations_are_recorded_once_and_reopen_keeps_data(db_path: str) -> None:
    sealer = SoftSealer()
    store = await SqliteGrantStore.connect(db_path, sealer, FakeClock())
    await store.create(make_grant())
    await store.close()
    store = await SqliteGrantStore.connect(db_path, sealer, FakeClock())
    try:
        assert (await store.get("g-1")).refresh_token == "RT-g-1-v1-plaintext"
    finally:
        await store.close()
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    conn.close()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


async def test_database_from_a_newer_broker_is_refused(db_path: str) -> None:
    store = await SqliteGrantStore.connect(db_path, SoftSealer(), FakeClock())
    await store.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    conn.close()
    store = SqliteGrantStore(db_path, SoftSealer(), FakeClock())
    with pytest.raises(ConfigError, match="schema version"):
        await store.open()
    await store.close()


async def test_not_a_database_is_refused_unchanged(db_path: str) -> None:
    content = b"this is not sqlite, just some bytes " * 200
    Path(db_path).write_bytes(content)
    store = SqliteGrantStore(db_path, SoftSealer(), FakeClock())
    with pytest.raises(StoreUnusable, match="not a SQLite database") as info:
        await store.open()
    assert info.value.retryable is False
    await store.close()
    assert Path(db_path).read_bytes() == content


async def test_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    store = SqliteGrantStore(str(tmp_path / "nope" / "grants.db"), SoftSealer(), FakeClock())
    with pytest.raises(StoreError, match="cannot create"):
        await store.open()
    await store.close()


@pytest.mark.parametrize("path", ["", ":memory:", "file:grants.db?mode=memory"])
def test_non_file_paths_are_refused(path: str) -> None:
    with pytest.raises(ConfigError):
        SqliteGrantStore(path, SoftSealer(), FakeClock())


async def test_operation_before_open_is_a_store_error(db_path: str) -> None:
    store = SqliteGrantStore(db_path, SoftSealer(), FakeClock())
    with pytest.raises(StoreError, match="not open"):
        await store.get("g-1")
    await store.close()


async def test_repr_names_path_and_key_label_only(db_path: str) -> None:
    store = SqliteGrantStore(db_path, SoftSealer(key_label="kek-1"), FakeClock())
    assert repr(store) == f"SqliteGrantStore(path={db_path!r}, sealer='kek-1')"
    await store.close()


async def test_locked_database_is_a_retryable_store_error_and_loses_nothing(db_path: str) -> None:
    store = await SqliteGrantStore.connect(db_path, SoftSealer(), FakeClock(), busy_timeout=0.05)
    await store.create(make_grant())
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        with pytest.raises(StoreError, match=r"sqlite rotate failed \(SQLITE_BUSY") as info:
            await store.rotate("g-1", make_tokens("v2", refresh="RT-v2"), expected_version=1)
        assert info.value.retryable
        other.execute("ROLLBACK")
    finally:
        other.close()
    got = await store.get("g-1")
    assert (got.version, got.refresh_token) == (1, "RT-g-1-v1-plaintext")
    rotated = await store.rotate("g-1", make_tokens("v2", refresh="RT-v2"), expected_version=1)
    assert rotated.refresh_token == "RT-v2"
    await store.close()
