"""The embedded grant store: one SQLite file, one broker process (single replica).

Durability: ``journal_mode=WAL`` with ``synchronous=FULL`` (a committed rotation survives power
loss; WAL + NORMAL may roll back the last commits, G03), every write in one ``BEGIN IMMEDIATE``
transaction. The file (and its ``-wal``/``-shm`` companions, which SQLite creates with the main
file's mode) is created 0600 (G09); tokens and id_token claims are sealed (see
:mod:`broker.tokens.stores.sealing`).

Binding (:mod:`broker.tokens.stores.deployment`, :mod:`broker.tokens.stores.sqlite_file`): only
a path that does not exist gets a fresh store (built aside, linked into place); an existing file
that is empty, truncated, not SQLite or without our tables is refused with
:class:`broker.errors.StoreUnusable` before anything is written to it. Opened with an
``identity``, the store records it at creation and refuses any other with
:class:`broker.errors.DeploymentMismatch`. The schema and its versions are in
:mod:`broker.tokens.stores.sqlite_schema`; the identity rows, the refresh schedule and pending
logins in ``sqlite_identities``, ``sqlite_schedule`` and ``sqlite_logins``, mixed in here.

Threads: the writer connection lives on one worker thread (the event loop never blocks on
disk); the refresh path's writes (intent, rotation, status, error) queued together share one
COMMIT (:mod:`broker.tokens.stores.sqlite_group`). ``get`` reads on a second, read-only
connection on its own thread (:mod:`broker.tokens.stores.sqlite_reader`), never waiting behind a
commit, and opens the row there once the read finished. HSM calls never run on the writer's
thread nor inside a transaction: a rotation seals first, then writes, and returns the tokens it
was given in plaintext. ``refresh_lock`` is a per-grant :class:`asyncio.Lock` in this process:
SQLite is the single-replica store (several replicas need
:class:`broker.tokens.stores.postgres.PostgresGrantStore`; another process opening the file is
still safe for data, thanks to transactions and ``expected_version``, but its refreshes are not
serialised with ours).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from broker.clock import Clock
from broker.errors import (
    ConfigError,
    GrantExists,
    GrantNotFound,
    StoreError,
    VersionConflict,
)
from broker.keys.api import Sealer
from broker.oauth.types import TokenSet
from broker.tokens.model import Grant, GrantStatus
from broker.tokens.stores.deployment import (
    DeploymentIdentity,
    check_grant_owner,
)
from broker.tokens.stores.due import DEFAULT_DUE_RULE, DueRule
from broker.tokens.stores.keyed_locks import KeyedLocks
from broker.tokens.stores.sealing import (
    COLUMNS,
    SealedRow,
    open_grant,
    opens_nothing,
    rotation_update,
    seal_grant,
)
from broker.tokens.stores.sqlite_changes import SqliteChanges
from broker.tokens.stores.sqlite_group import GroupCommit
from broker.tokens.stores.sqlite_identities import SqliteIdentities
from broker.tokens.stores.sqlite_logins import SqliteLogins
from broker.tokens.stores.sqlite_reader import SqliteReader
from broker.tokens.stores.sqlite_schedule import SqliteSchedule
from broker.tokens.stores.sqlite_schema import (
    FILE_MODE,
    MIGRATIONS,
    SCHEMA_VERSION,
    SqliteMigrations,
    wrap_error,
)
from broker.tokens.stores.validation import (
    check_expected_version,
    check_grant_id,
    check_label,
    check_reason,
    check_status,
    check_time,
    validate_tokens,
)

__all__ = ["FILE_MODE", "MIGRATIONS", "SCHEMA_VERSION", "SqliteGrantStore"]

T = TypeVar("T")


_SELECT = f"SELECT {', '.join(COLUMNS)} FROM grants"  # noqa: S608 (constant column list)


class SqliteGrantStore(
    SqliteLogins, SqliteIdentities, SqliteSchedule, SqliteChanges, SqliteMigrations
):
    """GrantStore over one SQLite file. Create it, then ``await store.open()`` (or use
    :meth:`connect`).

    ``identity``: the deployment opening the store (serve and doctor always give it). It is
    recorded when the store is created, or adopted by a store that has none (see
    :mod:`broker.tokens.stores.deployment`) unless ``record_identity`` is False (the doctor only
    compares); another recorded identity refuses the open. Without an identity nothing is
    compared or recorded (tests and tools that send no token).
    """

    def __init__(
        self,
        path: str,
        sealer: Sealer,
        clock: Clock,
        *,
        busy_timeout: float = 10.0,
        identity: DeploymentIdentity | None = None,
        record_identity: bool = True,
        due_rule: DueRule = DEFAULT_DUE_RULE,
    ) -> None:
        if not isinstance(path, str) or not path or path == ":memory:" or path.startswith("file:"):
            raise ConfigError("the SQLite grant store needs a file path")
        if not busy_timeout > 0:
            raise ConfigError("busy_timeout must be positive")
        self._path = path
        self._busy_timeout = float(busy_timeout)
        self._sealer = sealer
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grant-store")
        self._conn: sqlite3.Connection | None = None
        self._writes = GroupCommit(self._executor, self._connection, wrap_error)
        self._reader = SqliteReader(path, self._busy_timeout)  # get(): no wait behind writes
        self._locks = KeyedLocks()
        self._closed = False
        self._identity = identity
        self._record_identity = record_identity
        self._due_rule = due_rule
        self._owners: tuple[DeploymentIdentity, ...] = ()  # grants create() accepts (bound)
        self.adopted = False  # this open recorded the identity of a store that had none

    def __repr__(self) -> str:
        return f"SqliteGrantStore(path={self._path!r}, sealer={self._sealer.key_label!r})"

    @classmethod
    async def connect(
        cls,
        path: str,
        sealer: Sealer,
        clock: Clock,
        *,
        busy_timeout: float = 10.0,
        identity: DeploymentIdentity | None = None,
        record_identity: bool = True,
        due_rule: DueRule = DEFAULT_DUE_RULE,
    ) -> SqliteGrantStore:
        store = cls(
            path,
            sealer,
            clock,
            busy_timeout=busy_timeout,
            identity=identity,
            record_identity=record_identity,
            due_rule=due_rule,
        )
        try:
            await store.open()
        except BaseException:
            await store.close()  # a refused open leaves no worker thread or connection behind
            raise
        return store

    # --- plumbing ---------------------------------------------------------------------------

    async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("the grant store is closed")

        def call() -> T:
            conn = self._connection()
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise wrap_error(operation, exc) from exc

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the grant store is not open")
        return self._conn

    @staticmethod
    def _write(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one BEGIN IMMEDIATE transaction (rolled back on any error)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    async def open(self) -> None:
        """Create or open the file, check the pragmas and apply migrations."""
        if self._conn is not None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_sync)
        await self._reader.open()

    # --- GrantStore -------------------------------------------------------------------------

    async def create(self, grant: Grant) -> None:
        if self._closed:
            raise StoreError("the grant store is closed")
        # Sealed before the write (and off the store's thread): no HSM call under the lock.
        row = await asyncio.to_thread(seal_grant, self._sealer, grant)
        check_grant_owner(self._owners, grant.issuer, grant.client_id, grant.grant_id)
        due = self._due(row.grant_id, row.version, row.access_issued_at, row.access_expires_at)
        columns = (*COLUMNS, "refresh_due_at")
        placeholders = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO grants ({', '.join(columns)}) VALUES ({placeholders})"  # noqa: S608

        def insert(conn: sqlite3.Connection) -> None:
            def tx(c: sqlite3.Connection) -> None:
                if c.execute("SELECT 1 FROM grants WHERE grant_id = ?", (row.grant_id,)).fetchone():
                    raise GrantExists(f"grant {row.grant_id!r} already exists")
                c.execute(sql, (*row.values(), due))

            self._write(conn, tx)

        await self._run("create", insert)

    def _fetch(self, conn: sqlite3.Connection, grant_id: str) -> SealedRow:
        values = conn.execute(f"{_SELECT} WHERE grant_id = ?", (grant_id,)).fetchone()
        if values is None:
            raise GrantNotFound(f"no grant {grant_id!r}")
        return SealedRow.from_values(values)

    async def _open(self, row: SealedRow, known: TokenSet | None = None) -> Grant:
        """Open a row off the store's thread (HSM calls never hold up other store calls); a
        row whose sealed fields are all in ``known`` is built here (no HSM call, no hop)."""
        if opens_nothing(row, known):
            return open_grant(self._sealer, row, known=known)
        return await asyncio.to_thread(lambda: open_grant(self._sealer, row, known=known))

    async def get(self, grant_id: str) -> Grant:
        """Read on the reader's connection, then open the row on its thread (one hop)."""
        check_grant_id(grant_id)
        if self._closed:
            raise StoreError("the grant store is closed")
        return await self._reader.run(
            "get", lambda c: open_grant(self._sealer, self._fetch(c, grant_id))
        )

    async def list(self, *, label: str | None = None) -> list[Grant]:
        if label is not None:
            check_label(label)

        def fetch(conn: sqlite3.Connection) -> list[Any]:
            if label is None:
                return conn.execute(f"{_SELECT} ORDER BY grant_id").fetchall()
            return conn.execute(f"{_SELECT} WHERE label = ? ORDER BY grant_id", (label,)).fetchall()

        rows = await self._run("list", fetch)
        return await asyncio.to_thread(
            lambda: [open_grant(self._sealer, SealedRow.from_values(r)) for r in rows]
        )

    def _update(self, conn: sqlite3.Connection, grant_id: str, columns: dict[str, Any]) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        cursor = conn.execute(
            f"UPDATE grants SET {assignments} WHERE grant_id = ?",  # noqa: S608 (fixed names)
            (*columns.values(), grant_id),
        )
        if cursor.rowcount != 1:
            raise GrantNotFound(f"no grant {grant_id!r}")

    async def mark_refresh_started(self, grant_id: str, at: float) -> None:
        check_grant_id(grant_id)
        at = check_time("at", at)
        now = self._clock.now()
        await self._writes.write(
            "mark_refresh_started",
            lambda c: self._update(c, grant_id, {"refresh_started_at": at, "updated_at": now}),
        )

    async def rotate(
        self,
        grant_id: str,
        tokens: TokenSet,
        *,
        expected_version: int,
        refresh_due_at: float | None = None,
    ) -> Grant:
        """See :meth:`GrantStore.rotate`. ``refresh_due_at``: the next due time the caller
        computed (default: the store's rule). Seals before the write transaction; only what it
        was not given (a kept refresh token or claims) is opened, after it."""
        check_grant_id(grant_id)
        check_expected_version(expected_version)
        validate_tokens(tokens)
        if self._closed:
            raise StoreError("the grant store is closed")
        version = expected_version + 1
        due = (
            self._due(grant_id, version, tokens.received_at, tokens.expires_at)
            if refresh_due_at is None
            else check_time("refresh_due_at", refresh_due_at)
        )
        now = self._clock.now()

        def seal() -> dict[str, Any]:  # on a worker thread, before (outside) the transaction
            update = rotation_update(self._sealer, grant_id, tokens, now)
            update.update(version=version, refresh_due_at=due, claimed_by=None, claim_until=None)
            return update

        def tx(c: sqlite3.Connection, update: dict[str, Any]) -> SealedRow:
            row = c.execute("SELECT version FROM grants WHERE grant_id = ?", (grant_id,)).fetchone()
            if row is None:
                raise GrantNotFound(f"no grant {grant_id!r}")
            if int(row[0]) != expected_version:
                raise VersionConflict(
                    f"grant {grant_id!r} is at version {row[0]}, not {expected_version}"
                )
            self._update(c, grant_id, update)
            return self._fetch(c, grant_id)

        stored = await self._writes.write_after("rotate", seal, tx)
        return await self._open(stored, known=tokens)

    async def set_status(self, grant_id: str, status: GrantStatus, *, reason: str | None) -> Grant:
        check_grant_id(grant_id)
        check_status(status)
        if reason is not None:
            check_reason(reason)
        now = self._clock.now()

        def tx(c: sqlite3.Connection) -> SealedRow:
            self._update(
                c,
                grant_id,
                {
                    "status": status.value,
                    "last_error": reason,
                    "refresh_started_at": None,
                    "updated_at": now,
                    "claimed_by": None,
                    "claim_until": None,
                },
            )
            return self._fetch(c, grant_id)

        return await self._open(await self._writes.write("set_status", tx))

    async def record_error(self, grant_id: str, reason: str) -> None:
        check_grant_id(grant_id)
        check_reason(reason)
        now = self._clock.now()
        await self._writes.write(
            "record_error",
            lambda c: self._update(c, grant_id, {"last_error": reason, "updated_at": now}),
        )

    async def delete(self, grant_id: str) -> None:
        check_grant_id(grant_id)

        def tx(c: sqlite3.Connection) -> None:
            if c.execute("DELETE FROM grants WHERE grant_id = ?", (grant_id,)).rowcount != 1:
                raise GrantNotFound(f"no grant {grant_id!r}")

        await self._run("delete", lambda conn: self._write(conn, tx))

    def refresh_lock(self, grant_id: str) -> AbstractAsyncContextManager[None]:
        """Per-grant lock inside this process (SQLite is single-replica)."""
        check_grant_id(grant_id)
        return self._refresh_lock(grant_id)

    @asynccontextmanager
    async def _refresh_lock(self, grant_id: str) -> AsyncIterator[None]:
        if self._closed:
            raise StoreError("the grant store is closed")
        async with self._locks.hold(grant_id):
            yield

    async def ping(self) -> None:
        await self._run("ping", lambda c: c.execute("SELECT 1 FROM grants LIMIT 1").fetchall())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = self._writes.closed = True

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, shut)
        except sqlite3.Error as exc:
            raise wrap_error("close", exc) from exc
        finally:
            self._executor.shutdown(wait=True)
            await self._reader.close()
