"""Grant store checks: reachable and migrated, with the durability settings serve relies on.

SQLite (TEST-CATALOGUE G03): the file opens, ``journal_mode=WAL``, ``synchronous=FULL`` (2),
schema at this broker's version. A missing file is a warning: serve creates it, the doctor
does not. PostgreSQL: connect, schema version, ``ping``. Opening a store applies pending
migrations exactly as serve does at start-up; a schema newer than this broker fails.

The doctor never reads a grant, so the store gets a sealer that refuses to seal or open.
"""

from __future__ import annotations

import os

from broker.clock import Clock
from broker.config import Settings
from broker.doctor.result import CheckResult, fail, failed, ok, warn
from broker.errors import BrokerError, KeyStoreError
from broker.tokens import postgres, sqlite

NAME = "store"


class RefusingSealer:
    """A :class:`broker.keys.api.Sealer` for a store that must not touch any token."""

    @property
    def key_label(self) -> str:
        return "doctor-no-sealing"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        raise KeyStoreError("the doctor does not seal grants")

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        raise KeyStoreError("the doctor does not open grants")


async def check_store(
    settings: Settings, clock: Clock, *, pg_schema: str = "broker"
) -> CheckResult:
    """``store``. ``pg_schema`` is the PostgreSQL schema serve uses (tests pass their own)."""
    s = settings.store
    try:
        if s.kind == "postgres":
            assert s.dsn is not None  # load_settings requires it
            return await _postgres(s.dsn, clock, pg_schema)
        assert s.path is not None  # load_settings requires it
        return await _sqlite(str(s.path), clock)
    except BrokerError as exc:
        return failed(NAME, exc, f"{s.kind} store")


async def _sqlite(path: str, clock: Clock) -> CheckResult:
    if not os.path.exists(path):
        parent = os.path.dirname(path) or "."
        if not os.access(parent, os.W_OK | os.X_OK):
            return fail(NAME, f"sqlite: {path} does not exist and {parent} is not writable")
        return warn(NAME, f"sqlite: {path} does not exist yet (serve creates it)")
    store = await sqlite.SqliteGrantStore.connect(path, RefusingSealer(), clock)
    try:
        await store.ping()
        pragmas = await store.storage_settings()
    finally:
        await store.close()
    problems = []
    if pragmas.get("journal_mode", "").lower() != "wal":
        problems.append(f"journal_mode={pragmas.get('journal_mode')} (want wal)")
    if pragmas.get("synchronous") != "2":
        problems.append(f"synchronous={pragmas.get('synchronous')} (want 2, FULL)")
    version = pragmas.get("schema_version", "")
    if version != str(sqlite.SCHEMA_VERSION):
        problems.append(f"schema version {version or 'none'} (want {sqlite.SCHEMA_VERSION})")
    if problems:
        return fail(NAME, "sqlite: " + ", ".join(problems))
    return ok(NAME, f"sqlite {path}: WAL, synchronous=FULL, schema version {sqlite.SCHEMA_VERSION}")


async def _postgres(dsn: str, clock: Clock, schema: str) -> CheckResult:
    store = postgres.PostgresGrantStore(dsn, RefusingSealer(), clock, schema=schema)
    try:
        await store.open()
        version = await store.schema_version()
        await store.ping()
    finally:
        await store.close()
    if version != postgres.SCHEMA_VERSION:
        return fail(
            NAME, f"postgres schema {schema!r} at version {version}, want {postgres.SCHEMA_VERSION}"
        )
    return ok(NAME, f"postgres schema {schema!r} reachable, schema version {version}")
