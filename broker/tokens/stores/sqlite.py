"""The embedded grant store: one SQLite file, one broker process (single replica).

Durability: ``journal_mode=WAL`` with ``synchronous=FULL`` (a committed rotation survives power
loss; WAL + NORMAL may roll back the last commits, G03), every write in one ``BEGIN IMMEDIATE``
transaction. The file (and its ``-wal``/``-shm`` companions, which SQLite creates with the main
file's mode) is created 0600 (G09); tokens and id_token claims are sealed (see
:mod:`broker.tokens.stores.sealing`).

Binding (see :mod:`broker.tokens.stores.deployment` and :mod:`broker.tokens.stores.sqlite_file`): only a path
that does not exist gets a fresh store (built aside and linked into place); an existing file
that is empty, truncated, not SQLite or SQLite without our tables is refused with
:class:`broker.errors.StoreUnusable` before anything is written to it. Opened with an
``identity``, the store records it at creation (table ``deployment_identities``, schema version
2) and refuses any other with :class:`broker.errors.DeploymentMismatch`. Schema version 3 adds
the nullable ``access_issued_at`` and ``refresh_expires_at`` columns (the refresh schedule);
version 5 the ``kind`` column (user or machine grant); version 7 the scheduling columns
``refresh_due_at`` (indexed for the ACTIVE grants: the background pass reads only the due ones,
opening nothing) and the refresh lease ``claimed_by``/``claim_until``.

HSM calls (sealing and opening tokens) never run on the store's worker thread nor inside a write
transaction: a rotation seals first, writes, and returns the tokens it was given in plaintext.

Concurrency: all SQLite calls run on one dedicated worker thread that owns the connection, so
the event loop never blocks on disk. ``refresh_lock`` is a per-grant :class:`asyncio.Lock` inside
this process: SQLite is the single-replica store. Several replicas need
:class:`broker.tokens.stores.postgres.PostgresGrantStore`. (Another process opening the same file is
still safe for data, thanks to transactions and the ``expected_version`` check, but refreshes are
then not serialised across processes.)
"""

from __future__ import annotations

import asyncio
import builtins
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from broker.clock import Clock
from broker.errors import (
    ConfigError,
    GrantExists,
    GrantNotFound,
    InvalidArgument,
    StoreError,
    VersionConflict,
)
from broker.keys.api import Sealer
from broker.oauth.types import TokenSet
from broker.tokens.model import Grant, GrantExpiry, GrantStatus, GrantSummary
from broker.tokens.stores.deployment import (
    IDENTITY_COLUMNS,
    DeploymentIdentity,
    IdentityRole,
    IdentityState,
    RecordedHow,
    RecordedIdentity,
    check_binding,
    check_grant_owner,
    identity_row,
    log_adoption,
    recorded_from_row,
)
from broker.tokens.stores.due import DEFAULT_DUE_RULE, DueRule, due_at
from broker.tokens.stores.memory import KeyedLocks
from broker.tokens.stores.sealing import (
    COLUMNS,
    SUMMARY_COLUMNS,
    SealedRow,
    check_claim,
    check_due_query,
    check_expected_version,
    check_grant_id,
    check_label,
    check_reason,
    check_status,
    check_time,
    grant_expiry,
    grant_summary,
    open_grant,
    rotation_update,
    seal_grant,
    validate_tokens,
)
from broker.tokens.stores.sqlite_file import check_is_grant_store, create_fresh, inspect_existing
from broker.tokens.stores.sqlite_logins import LOGINS_MIGRATION, SqliteLogins

T = TypeVar("T")

FILE_MODE = 0o600

#: Schema migrations, applied in order inside one BEGIN IMMEDIATE transaction each.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """
            CREATE TABLE grants (
                grant_id TEXT PRIMARY KEY,
                label TEXT NOT NULL,
                issuer TEXT NOT NULL,
                client_id TEXT NOT NULL,
                subject TEXT NOT NULL,
                scope TEXT NOT NULL,
                status TEXT NOT NULL,
                access_token BLOB NOT NULL,
                access_expires_at REAL NOT NULL,
                refresh_token BLOB,
                id_claims BLOB NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                version INTEGER NOT NULL CHECK (version >= 1),
                refresh_started_at REAL,
                last_error TEXT,
                seal_key TEXT NOT NULL
            ) STRICT
            """,
            "CREATE INDEX grants_by_label ON grants (label)",
        ),
    ),
    (
        2,
        (
            """
            CREATE TABLE deployment_identities (
                issuer TEXT NOT NULL,
                client_id TEXT NOT NULL,
                did TEXT NOT NULL,
                role TEXT NOT NULL CHECK (role IN ('primary', 'added')),
                how TEXT NOT NULL CHECK (how IN ('created', 'adopted', 'ceremony')),
                schema_version INTEGER NOT NULL,
                recorded_at REAL NOT NULL,
                PRIMARY KEY (issuer, client_id, did)
            ) STRICT
            """,
            "CREATE UNIQUE INDEX deployment_identities_one_primary "
            "ON deployment_identities (role) WHERE role = 'primary'",
        ),
    ),
    (
        3,
        (
            # NULL for grants stored before: the schedule falls back to the threshold and to
            # [oauth].refresh_token_lifetime (broker.tokens.schedule).
            "ALTER TABLE grants ADD COLUMN access_issued_at REAL",
            "ALTER TABLE grants ADD COLUMN refresh_expires_at REAL",
        ),
    ),
    (4, LOGINS_MIGRATION),  # pending interactive logins (broker.tokens.stores.sqlite_logins)
    (
        5,
        (
            # How a grant renews (broker.tokens.model.GrantKind); grants before are user grants.
            "ALTER TABLE grants ADD COLUMN kind TEXT NOT NULL DEFAULT 'user' "
            "CHECK (kind IN ('user', 'machine'))",
        ),
    ),
    (
        6,
        (
            # Key rotation (broker.tokens.stores.identities): where each identity is in it and its key.
            "ALTER TABLE deployment_identities ADD COLUMN state TEXT NOT NULL DEFAULT 'active' "
            "CHECK (state IN ('prepared', 'active', 'retiring', 'retired'))",
            "ALTER TABLE deployment_identities ADD COLUMN key_uri TEXT",
        ),
    ),
    (
        7,
        (
            # Scheduling without opening tokens (broker.tokens.stores.due); NULL due times of
            # older grants are filled in by the open that migrates.
            "ALTER TABLE grants ADD COLUMN refresh_due_at REAL",
            "ALTER TABLE grants ADD COLUMN claimed_by TEXT",
            "ALTER TABLE grants ADD COLUMN claim_until REAL",
            "CREATE INDEX grants_due ON grants (refresh_due_at) WHERE status = 'active'",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM grants"  # noqa: S608 (constant column list)
_SELECT_SUMMARY = f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM grants"  # noqa: S608 (constant)
_DUE_WHERE = "status = 'active' AND refresh_due_at <= ?"  # literal: the partial index applies
_SELECT_IDENTITIES = (
    f"SELECT {', '.join(IDENTITY_COLUMNS)} FROM deployment_identities "  # noqa: S608 (constant)
    "ORDER BY role DESC, recorded_at"
)
_INSERT_IDENTITY = (
    f"INSERT INTO deployment_identities ({', '.join(IDENTITY_COLUMNS)}) "  # noqa: S608 (constant)
    f"VALUES ({', '.join('?' for _ in IDENTITY_COLUMNS)})"
)


def _wrap(operation: str, exc: sqlite3.Error) -> StoreError:
    """A StoreError naming the operation and SQLite's error code, never a value."""
    code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    return StoreError(f"sqlite {operation} failed ({code})")


class SqliteGrantStore(SqliteLogins):
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
            if self._conn is None:
                raise StoreError("the grant store is not open")
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise _wrap(operation, exc) from exc

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call)

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

    def _open_sync(self) -> None:
        if self._conn is not None:  # a concurrent open() ran first (same worker thread)
            return
        if not os.path.lexists(self._path):
            # Only a path that does not exist gets a fresh store (built aside, then linked).
            try:
                create_fresh(self._path, FILE_MODE, lambda c: self._migrate(c, fresh=True))
            except sqlite3.Error as exc:
                raise _wrap("create", exc) from exc
        inspect_existing(self._path)  # before SQLite writes a byte to it
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_timeout)
        except sqlite3.Error as exc:
            raise _wrap("open", exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={round(self._busy_timeout * 1000)}")
            check_is_grant_store(conn, self._path)
            conn.execute("PRAGMA synchronous=FULL")
            self._migrate(conn, fresh=False)
            mode_row = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode_row is None or str(mode_row[0]).lower() != "wal":
                raise ConfigError("the grant database could not be switched to WAL mode")
            conn.execute("PRAGMA synchronous=FULL")
            sync_row = conn.execute("PRAGMA synchronous").fetchone()
            if sync_row is None or int(sync_row[0]) != 2:
                raise ConfigError("the grant database refused synchronous=FULL")
        except sqlite3.Error as exc:
            conn.close()
            raise _wrap("open", exc) from exc
        except BaseException:
            conn.close()
            raise
        # Ours: tighten the modes (G09) of the file and of the companions SQLite created.
        for suffix in ("", "-wal", "-shm"):
            name = self._path + suffix
            if os.path.exists(name) and stat.S_IMODE(os.stat(name).st_mode) & 0o077:
                os.chmod(name, FILE_MODE)
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection, *, fresh: bool) -> None:
        """Apply migrations and bind the identity, in one BEGIN IMMEDIATE transaction: a
        refused binding leaves the file as it was."""

        def step(c: sqlite3.Connection) -> bool:
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            row = c.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"the grant database is at schema version {current}; "
                    f"this broker knows up to {SCHEMA_VERSION}"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    c.execute(statement)
                c.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, self._clock.now()),
                )
            self._fill_due(c)
            return self._bind(c, fresh=fresh)

        if self._write(conn, step) and not fresh:
            self.adopted = True
            count = conn.execute("SELECT COUNT(*) FROM grants").fetchone()
            log_adoption(self._path, self._require_identity(), int(count[0]) if count else 0)

    def _fill_due(self, c: sqlite3.Connection) -> builtins.list[Any]:
        """Give grants without one (stored before schema 7, or rescheduled) their due time
        (clear columns only)."""
        rows = c.execute(
            "SELECT grant_id, version, access_issued_at, access_expires_at FROM grants "
            "WHERE refresh_due_at IS NULL"
        ).fetchall()
        c.executemany(
            "UPDATE grants SET refresh_due_at = ? WHERE grant_id = ?",
            [
                (self._due(str(gid), int(v), issued, float(expires)), gid)
                for gid, v, issued, expires in rows
            ],
        )
        return rows

    def _due(self, grant_id: str, version: int, issued: float | None, expires: float) -> float:
        return due_at(self._due_rule, grant_id, version, issued_at=issued, expires_at=expires)

    def _require_identity(self) -> DeploymentIdentity:
        assert self._identity is not None
        return self._identity

    def _bind(self, c: sqlite3.Connection, *, fresh: bool) -> bool:
        """Compare (and maybe record) the identity inside the migration transaction. Returns
        True when it recorded one."""
        recorded = [recorded_from_row(r) for r in c.execute(_SELECT_IDENTITIES).fetchall()]
        if self._identity is None:
            self._owners = tuple(r.identity for r in recorded)
            return False
        owners = {
            (str(i), str(cid))
            for i, cid in c.execute("SELECT DISTINCT issuer, client_id FROM grants").fetchall()
        }
        record = check_binding(recorded, self._identity, grant_owners=owners, where=self._path)
        if record and self._record_identity:
            how = RecordedHow.CREATED if fresh else RecordedHow.ADOPTED
            c.execute(
                _INSERT_IDENTITY,
                identity_row(
                    self._identity, IdentityRole.PRIMARY, how, SCHEMA_VERSION, self._clock.now()
                ),
            )
        self._owners = (*(r.identity for r in recorded), self._identity)
        return record and self._record_identity

    async def open(self) -> None:
        """Create or open the file, check the pragmas and apply migrations."""
        if self._conn is not None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_sync)

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
        """Open a row off the store's thread (HSM calls never hold up other store calls)."""
        return await asyncio.to_thread(lambda: open_grant(self._sealer, row, known=known))

    async def get(self, grant_id: str) -> Grant:
        check_grant_id(grant_id)
        return await self._open(await self._run("get", lambda c: self._fetch(c, grant_id)))

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

    # --- GrantIndex / RefreshClaims: clear columns only ---------------------------------------

    async def list_metadata(self, *, label: str | None = None) -> builtins.list[GrantSummary]:
        if label is not None:
            check_label(label)

        def fetch(conn: sqlite3.Connection) -> builtins.list[GrantSummary]:
            if label is None:
                rows = conn.execute(f"{_SELECT_SUMMARY} ORDER BY grant_id").fetchall()
            else:
                rows = conn.execute(
                    f"{_SELECT_SUMMARY} WHERE label = ? ORDER BY grant_id", (label,)
                ).fetchall()
            return [grant_summary(r) for r in rows]

        return await self._run("list_metadata", fetch)

    async def reschedule(self, rule: DueRule) -> int:
        if rule == self._due_rule:
            return 0
        self._due_rule = rule

        def tx(c: sqlite3.Connection) -> int:
            c.execute("UPDATE grants SET refresh_due_at = NULL WHERE status = 'active'")
            return len(self._fill_due(c))

        return await self._run("reschedule", lambda conn: self._write(conn, tx))

    async def due(
        self, now: float, *, horizon: float = 0.0, limit: int = 1000
    ) -> builtins.list[GrantSummary]:
        now, horizon, limit = check_due_query(now, horizon, limit)

        def fetch(conn: sqlite3.Connection) -> builtins.list[GrantSummary]:
            rows = conn.execute(
                f"{_SELECT_SUMMARY} WHERE {_DUE_WHERE} ORDER BY refresh_due_at, grant_id LIMIT ?",
                (now + horizon, limit),
            ).fetchall()
            return [grant_summary(r) for r in rows]

        return await self._run("due", fetch)

    async def claim_due(
        self, now: float, *, owner: str, lease: float, horizon: float = 0.0, limit: int = 1000
    ) -> builtins.list[GrantSummary]:
        now, horizon, limit = check_due_query(now, horizon, limit)
        owner, lease = check_claim(owner, lease)
        sql = (
            "UPDATE grants SET claimed_by = ?, claim_until = ? WHERE grant_id IN ("  # noqa: S608
            f"SELECT grant_id FROM grants WHERE {_DUE_WHERE} "
            "AND (claim_until IS NULL OR claim_until <= ?) "
            "ORDER BY refresh_due_at, grant_id LIMIT ?) "
            f"RETURNING {', '.join(SUMMARY_COLUMNS)}"
        )

        def tx(c: sqlite3.Connection) -> builtins.list[GrantSummary]:
            rows = c.execute(sql, (owner, now + lease, now + horizon, now, limit))
            return [grant_summary(r) for r in rows.fetchall()]

        claimed = await self._run("claim_due", lambda conn: self._write(conn, tx))
        return sorted(claimed, key=lambda g: (g.refresh_due_at, g.grant_id))

    async def release_claim(self, grant_id: str, *, owner: str) -> None:
        check_grant_id(grant_id)
        owner, _ = check_claim(owner, 1.0)
        await self._run(
            "release_claim",
            lambda conn: self._write(
                conn,
                lambda c: c.execute(
                    "UPDATE grants SET claimed_by = NULL, claim_until = NULL "
                    "WHERE grant_id = ? AND claimed_by = ?",
                    (grant_id, owner),
                ),
            ),
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
        await self._run(
            "mark_refresh_started",
            lambda conn: self._write(
                conn,
                lambda c: self._update(c, grant_id, {"refresh_started_at": at, "updated_at": now}),
            ),
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
        computed (default: the store's rule). Seals before the write transaction and returns
        the given tokens as they are: only what it did not get (the kept refresh token, the
        kept claims) is opened, after the transaction."""
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
        update = await asyncio.to_thread(
            rotation_update, self._sealer, grant_id, tokens, self._clock.now()
        )
        update.update(version=version, refresh_due_at=due, claimed_by=None, claim_until=None)

        def tx(c: sqlite3.Connection) -> SealedRow:
            row = c.execute("SELECT version FROM grants WHERE grant_id = ?", (grant_id,)).fetchone()
            if row is None:
                raise GrantNotFound(f"no grant {grant_id!r}")
            if int(row[0]) != expected_version:
                raise VersionConflict(
                    f"grant {grant_id!r} is at version {row[0]}, not {expected_version}"
                )
            self._update(c, grant_id, update)
            return self._fetch(c, grant_id)

        stored = await self._run("rotate", lambda conn: self._write(conn, tx))
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

        return await self._open(await self._run("set_status", lambda conn: self._write(conn, tx)))

    async def record_error(self, grant_id: str, reason: str) -> None:
        check_grant_id(grant_id)
        check_reason(reason)
        now = self._clock.now()
        await self._run(
            "record_error",
            lambda conn: self._write(
                conn, lambda c: self._update(c, grant_id, {"last_error": reason, "updated_at": now})
            ),
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

    async def expiries(self) -> Sequence[GrantExpiry]:
        """The expiry columns of every ACTIVE grant (clear columns only: no token is opened)."""

        def read(c: sqlite3.Connection) -> Sequence[GrantExpiry]:
            rows = c.execute(
                "SELECT grant_id, access_expires_at, access_issued_at, refresh_expires_at "
                "FROM grants WHERE status = ? ORDER BY grant_id",
                (GrantStatus.ACTIVE.value,),
            ).fetchall()
            return [grant_expiry(r) for r in rows]

        return await self._run("expiries", read)

    async def identities(self) -> Sequence[RecordedIdentity]:
        """The deployment identities recorded in this store (primary first)."""
        return await self._run(
            "identities",
            lambda c: [recorded_from_row(r) for r in c.execute(_SELECT_IDENTITIES).fetchall()],
        )

    async def add_identity(
        self, identity: DeploymentIdentity, *, state: IdentityState, key_uri: str | None
    ) -> RecordedIdentity:
        """IdentityLedger: record a further identity (a key-rotation ceremony)."""
        row = identity_row(
            identity,
            IdentityRole.ADDED,
            RecordedHow.CEREMONY,
            SCHEMA_VERSION,
            self._clock.now(),
            state=state,
            key_uri=key_uri,
        )

        def run(conn: sqlite3.Connection) -> None:
            def tx(c: sqlite3.Connection) -> None:
                try:
                    c.execute(_INSERT_IDENTITY, row)
                except sqlite3.IntegrityError:
                    raise InvalidArgument(
                        f"the identity {identity.describe()} is recorded already"
                    ) from None

            self._write(conn, tx)

        await self._run("add_identity", run)
        return recorded_from_row(row)

    async def set_identity(
        self,
        identity: DeploymentIdentity,
        *,
        state: IdentityState | None = None,
        key_uri: str | None = None,
    ) -> RecordedIdentity:
        """IdentityLedger: change an identity's rotation state and/or key URI."""
        key = (identity.issuer, identity.client_id, identity.did)

        def run(conn: sqlite3.Connection) -> RecordedIdentity:
            def tx(c: sqlite3.Connection) -> RecordedIdentity:
                c.execute(
                    "UPDATE deployment_identities SET state = COALESCE(?, state), "
                    "key_uri = COALESCE(?, key_uri) WHERE issuer = ? AND client_id = ? AND did = ?",
                    (None if state is None else state.value, key_uri, *key),
                )
                found = c.execute(
                    f"SELECT {', '.join(IDENTITY_COLUMNS)} FROM deployment_identities "  # noqa: S608
                    "WHERE issuer = ? AND client_id = ? AND did = ?",
                    key,
                ).fetchone()
                if found is None:
                    raise InvalidArgument(f"the identity {identity.describe()} is not recorded")
                return recorded_from_row(found)

            return self._write(conn, tx)

        return await self._run("set_identity", run)

    async def storage_settings(self) -> dict[str, str]:
        """The durability pragmas of the live connection (for ``broker doctor`` and G03)."""

        def read(c: sqlite3.Connection) -> dict[str, str]:
            settings: dict[str, str] = {}
            for pragma in ("journal_mode", "synchronous", "user_version"):
                row = c.execute(f"PRAGMA {pragma}").fetchone()
                settings[pragma] = str(row[0]) if row else ""
            row = c.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            settings["schema_version"] = str(row[0]) if row else ""
            return settings

        return await self._run("storage_settings", read)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, shut)
        except sqlite3.Error as exc:
            raise _wrap("close", exc) from exc
        finally:
            self._executor.shutdown(wait=True)
