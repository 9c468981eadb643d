"""SQLite grant store: only a missing path gets a fresh store; anything else that exists must be
a whole grant store of ours, and a refused file is left byte-for-byte as it was (issue 8 §3).
Also the migration of a schema-1 store (before the deployment identity record)."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from broker.errors import DeploymentMismatch, StoreUnusable
from broker.keys.soft import SoftSealer
from broker.tokens.stores.deployment import DeploymentIdentity, RecordedHow
from broker.tokens.stores.sealing import COLUMNS, seal_grant
from broker.tokens.stores.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import make_grant

OURS = DeploymentIdentity(
    issuer="https://verifier.example", client_id="did:key:zDnaeClient", did="did:key:zDnaeClient"
)

V1_COLUMNS = COLUMNS[: COLUMNS.index("access_issued_at")]  # schema 3 added the rest


def snapshot(directory: Path) -> dict[str, str]:
    """Every file in ``directory`` and the hash of its bytes (refused opens add none)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


async def assert_refused_unchanged(path: Path, match: str) -> StoreUnusable:
    before = snapshot(path.parent)
    mode = os.stat(path).st_mode
    store = SqliteGrantStore(str(path), SoftSealer(), FakeClock(), identity=OURS)
    with pytest.raises(StoreUnusable, match=match) as info:
        await store.open()
    await store.close()
    assert snapshot(path.parent) == before
    assert os.stat(path).st_mode == mode
    assert info.value.retryable is False
    assert str(path) in str(info.value)
    return info.value


async def make_store(path: Path, grants: int = 1) -> None:
    store = await SqliteGrantStore.connect(str(path), SoftSealer(), FakeClock(), identity=OURS)
    for n in range(grants):
        await store.create(make_grant(f"g-{n}", label="x" * 200))
    await store.close()


async def test_zero_length_file_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "grants.db"
    path.touch(mode=0o600)
    await assert_refused_unchanged(path, "empty")
    assert path.stat().st_size == 0


async def test_truncated_store_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "grants.db"
    await make_store(path, grants=200)
    data = path.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    assert len(data) > 4 * page_size  # several pages: a cut at a page boundary is possible
    path.write_bytes(data[: 2 * page_size])  # whole pages, fewer than the header records
    await assert_refused_unchanged(path, "truncated")
    path.write_bytes(data[: 2 * page_size + 1000])  # mid-page
    await assert_refused_unchanged(path, "truncated")
    path.write_bytes(data[:60])  # not even a header
    await assert_refused_unchanged(path, "not a SQLite database")


async def test_sqlite_file_without_our_tables_is_refused_and_left_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "grants.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.close()
    error = await assert_refused_unchanged(path, "not a grant store")
    assert "invoices" in str(error)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"invoices"}


async def test_non_sqlite_file_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "grants.db"
    path.write_bytes(b"-----BEGIN SOMETHING-----\n" + os.urandom(8192))
    await assert_refused_unchanged(path, "not a SQLite database")


async def test_directory_at_the_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "grants.db"
    path.mkdir()
    store = SqliteGrantStore(str(path), SoftSealer(), FakeClock(), identity=OURS)
    with pytest.raises(StoreUnusable, match="not a regular file"):
        await store.open()
    await store.close()


async def test_missing_path_gets_a_fresh_bound_store_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "grants.db"
    store = await SqliteGrantStore.connect(str(path), SoftSealer(), FakeClock(), identity=OURS)
    try:
        (recorded,) = await store.identities()
        assert (recorded.identity, recorded.how) == (OURS, RecordedHow.CREATED)
        assert (await store.storage_settings())["journal_mode"] == "wal"
    finally:
        await store.close()
    assert not [p.name for p in tmp_path.iterdir() if ".init-" in p.name]
    assert path.stat().st_mode & 0o777 == 0o600


def write_schema_1_store(path: Path, *grants: tuple[str, str, str]) -> SoftSealer:
    """A store as the previous broker left it: schema version 1, no identity record."""
    sealer = SoftSealer()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        version, statements = MIGRATIONS[0]
        assert version == 1
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
        for grant_id, issuer, client_id in grants:
            row = seal_grant(sealer, make_grant(grant_id, issuer=issuer, client_id=client_id))
            conn.execute(
                f"INSERT INTO grants ({', '.join(V1_COLUMNS)}) "  # noqa: S608
                f"VALUES ({', '.join('?' for _ in V1_COLUMNS)})",
                row.values()[: len(V1_COLUMNS)],
            )
    conn.close()
    return sealer


async def test_schema_1_store_of_this_deployment_is_migrated_and_adopted_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "grants.db"
    sealer = write_schema_1_store(path, ("g-1", OURS.issuer, OURS.client_id))
    with caplog.at_level(logging.WARNING, logger="broker.tokens.stores.deployment"):
        store = await SqliteGrantStore.connect(str(path), sealer, FakeClock(), identity=OURS)
    try:
        assert store.adopted
        (recorded,) = await store.identities()
        assert (recorded.identity, recorded.how) == (OURS, RecordedHow.ADOPTED)
        assert [g.grant_id for g in await store.list()] == ["g-1"]
        assert (await store.storage_settings())["schema_version"] == str(SCHEMA_VERSION)
    finally:
        await store.close()
    (line,) = [r for r in caplog.records if "had no deployment identity" in r.getMessage()]
    assert OURS.issuer in line.getMessage() and str(path) in line.getMessage()


async def test_schema_1_store_of_another_deployment_is_refused_and_not_migrated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "grants.db"
    write_schema_1_store(path, ("g-1", "https://other-verifier.example", OURS.client_id))
    store = SqliteGrantStore(str(path), SoftSealer(), FakeClock(), identity=OURS)
    with pytest.raises(DeploymentMismatch, match="other-verifier"):
        await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert versions == [1]  # the refused open rolled its migration back
    assert "deployment_identities" not in tables
