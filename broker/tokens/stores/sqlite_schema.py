"""The SQLite grant store's schema: the file, its pragmas, the migrations and their runner.

:class:`SqliteMigrations` is the schema half of
:class:`broker.tokens.stores.sqlite.SqliteGrantStore`: every open creates or inspects the file
(0600, WAL, ``synchronous=FULL``), then applies the missing steps of :data:`MIGRATIONS` and binds
the deployment identity in one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from broker.clock import Clock
from broker.errors import ConfigError, StoreError
from broker.tokens.stores.deployment import DeploymentIdentity, log_adoption
from broker.tokens.stores.sqlite_changes import STATUS_CHANGES_MIGRATION
from broker.tokens.stores.sqlite_file import check_is_grant_store, create_fresh, inspect_existing
from broker.tokens.stores.sqlite_logins import LOGINS_MIGRATION

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
    (
        8,
        (
            # Counting grants by status without reading rows (GrantIndex.count_by_status: the
            # gauge of grants needing re-authorization).
            "CREATE INDEX grants_by_status ON grants (status)",
        ),
    ),
    # Status changes seen by every replica (broker.tokens.stores.changes): status_seq.
    (9, STATUS_CHANGES_MIGRATION),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def wrap_error(operation: str, exc: sqlite3.Error) -> StoreError:
    """A StoreError naming the operation and SQLite's error code, never a value."""
    code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    return StoreError(f"sqlite {operation} failed ({code})")


class SqliteMigrations:
    """Schema migrations and the identity binding on open; mixed into the SQLite grant store."""

    if TYPE_CHECKING:
        _clock: Clock
        _path: str
        _busy_timeout: float
        _conn: sqlite3.Connection | None
        adopted: bool

        async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        @staticmethod
        def _write(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        def _fill_due(self, c: sqlite3.Connection) -> builtins.list[Any]: ...

        def _bind(self, c: sqlite3.Connection, *, fresh: bool) -> bool: ...

        def _require_identity(self) -> DeploymentIdentity: ...

    def _open_sync(self) -> None:
        if self._conn is not None:  # a concurrent open() ran first (same worker thread)
            return
        if not os.path.lexists(self._path):
            # Only a path that does not exist gets a fresh store (built aside, then linked).
            try:
                create_fresh(self._path, FILE_MODE, lambda c: self._migrate(c, fresh=True))
            except sqlite3.Error as exc:
                raise wrap_error("create", exc) from exc
        inspect_existing(self._path)  # before SQLite writes a byte to it
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_timeout)
        except sqlite3.Error as exc:
            raise wrap_error("open", exc) from exc
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
            raise wrap_error("open", exc) from exc
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
