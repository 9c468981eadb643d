"""The PostgreSQL grant store's schema: the migrations and the runner that applies them.

:class:`PostgresMigrations` is the schema half of
:class:`broker.tokens.stores.postgres.PostgresGrantStore`: :meth:`PostgresMigrations.open`
creates the schema and its tables under a transaction-level advisory lock (replicas starting
together do not race), applies the missing steps of :data:`MIGRATIONS` and binds the deployment
identity, all in one transaction. Only a missing or empty schema is initialised.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from broker.clock import Clock
from broker.errors import ConfigError, StoreUnusable
from broker.tokens.stores.deployment import (
    DeploymentIdentity,
    log_adoption,
)
from broker.tokens.stores.postgres_changes import STATUS_CHANGES_MIGRATION
from broker.tokens.stores.postgres_logins import LOGINS_MIGRATION
from broker.tokens.stores.postgres_pool import Pool, wrap_error

#: Schema migrations; ``{schema}`` is the quoted schema identifier.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """
            CREATE TABLE {schema}.grants (
                grant_id TEXT PRIMARY KEY,
                label TEXT NOT NULL,
                issuer TEXT NOT NULL,
                client_id TEXT NOT NULL,
                subject TEXT NOT NULL,
                scope TEXT NOT NULL,
                status TEXT NOT NULL,
                access_token BYTEA NOT NULL,
                access_expires_at DOUBLE PRECISION NOT NULL,
                refresh_token BYTEA,
                id_claims BYTEA NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                version BIGINT NOT NULL CHECK (version >= 1),
                refresh_started_at DOUBLE PRECISION,
                last_error TEXT,
                seal_key TEXT NOT NULL
            )
            """,
            "CREATE INDEX grants_by_label ON {schema}.grants (label)",
        ),
    ),
    (
        2,
        (
            """
            CREATE TABLE {schema}.deployment_identities (
                issuer TEXT NOT NULL,
                client_id TEXT NOT NULL,
                did TEXT NOT NULL,
                role TEXT NOT NULL CHECK (role IN ('primary', 'added')),
                how TEXT NOT NULL CHECK (how IN ('created', 'adopted', 'ceremony')),
                schema_version INTEGER NOT NULL,
                recorded_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (issuer, client_id, did)
            )
            """,
            "CREATE UNIQUE INDEX deployment_identities_one_primary "
            "ON {schema}.deployment_identities (role) WHERE role = 'primary'",
        ),
    ),
    (
        3,
        (
            # NULL for grants stored before: see broker.tokens.schedule.
            "ALTER TABLE {schema}.grants ADD COLUMN access_issued_at DOUBLE PRECISION",
            "ALTER TABLE {schema}.grants ADD COLUMN refresh_expires_at DOUBLE PRECISION",
        ),
    ),
    (4, LOGINS_MIGRATION),  # pending interactive logins (broker.tokens.stores.postgres_logins)
    (
        5,
        (
            # How a grant renews (broker.tokens.model.GrantKind); grants before are user grants.
            "ALTER TABLE {schema}.grants ADD COLUMN kind TEXT NOT NULL DEFAULT 'user' "
            "CHECK (kind IN ('user', 'machine'))",
        ),
    ),
    (
        6,
        (
            # Key rotation (broker.tokens.stores.identities): where each identity is in it and its key.
            "ALTER TABLE {schema}.deployment_identities ADD COLUMN state TEXT NOT NULL "
            "DEFAULT 'active' CHECK (state IN ('prepared', 'active', 'retiring', 'retired'))",
            "ALTER TABLE {schema}.deployment_identities ADD COLUMN key_uri TEXT",
        ),
    ),
    (
        7,
        (
            # Scheduling without opening tokens (broker.tokens.stores.due); NULL due times of
            # older grants are filled in by the open that migrates.
            "ALTER TABLE {schema}.grants ADD COLUMN refresh_due_at DOUBLE PRECISION",
            "ALTER TABLE {schema}.grants ADD COLUMN claimed_by TEXT",
            "ALTER TABLE {schema}.grants ADD COLUMN claim_until DOUBLE PRECISION",
            "CREATE INDEX grants_due ON {schema}.grants (refresh_due_at) WHERE status = 'active'",
        ),
    ),
    (
        8,
        (
            # Counting grants by status without reading rows (GrantIndex.count_by_status: the
            # gauge of grants needing re-authorization).
            "CREATE INDEX grants_by_status ON {schema}.grants (status)",
        ),
    ),
    # Status changes seen by every replica (broker.tokens.stores.changes): status_xid.
    (9, STATUS_CHANGES_MIGRATION),
)
OUR_TABLES = frozenset({"schema_migrations", "grants"})
SCHEMA_VERSION = MIGRATIONS[-1][0]


class PostgresMigrations:
    """Schema creation, migrations and the identity binding on open; mixed into the PostgreSQL
    grant store."""

    if TYPE_CHECKING:
        _clock: Clock
        _pool: Pool
        _schema: str
        _where: str
        _ident: sql.Identifier
        _identity: DeploymentIdentity | None
        _opened: bool
        adopted: bool

        def _check_open(self) -> None: ...

        def _operation(
            self, operation: str
        ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...

        async def _fill_due(self, conn: psycopg.AsyncConnection[Any]) -> int: ...

        async def _bind(
            self, conn: psycopg.AsyncConnection[Any], *, fresh: bool
        ) -> tuple[bool, int]: ...

    async def open(self) -> None:
        """Create the schema and tables (migrations with a version table) and bind the
        identity. Only a missing or empty schema is initialised."""
        self._check_open()
        if self._opened:
            return
        try:
            async with self._pool.connection("open") as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    (f"broker.migrate:{self._schema}",),
                )
                cur = await conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                    (self._schema,),
                )
                tables = {str(r[0]) for r in await cur.fetchall()}
                fresh = not tables
                if not fresh and not tables >= OUR_TABLES:
                    found = ", ".join(sorted(tables)[:5])
                    raise StoreUnusable(
                        f"the PostgreSQL schema {self._schema!r} on {self._where} holds tables "
                        f"but is not a grant store (no "
                        f"{', '.join(sorted(OUR_TABLES - tables))}; tables found: {found}): "
                        "refusing it (the broker never initialises a schema in use); "
                        "configure another schema or empty this one"
                    )
                await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self._ident))
                await conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {}.schema_migrations "
                        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
                    ).format(self._ident)
                )
                cur = await conn.execute(
                    sql.SQL("SELECT COALESCE(MAX(version), 0) FROM {}.schema_migrations").format(
                        self._ident
                    )
                )
                row = await cur.fetchone()
                current = int(row[0]) if row else 0
                if current > SCHEMA_VERSION:
                    raise ConfigError(
                        f"the grant schema is at version {current}; "
                        f"this broker knows up to {SCHEMA_VERSION}"
                    )
                for version, statements in MIGRATIONS:
                    if version <= current:
                        continue
                    for statement in statements:
                        await conn.execute(sql.SQL(statement).format(schema=self._ident))
                    await conn.execute(
                        sql.SQL(
                            "INSERT INTO {}.schema_migrations (version, applied_at) VALUES (%s, %s)"
                        ).format(self._ident),
                        (version, self._clock.now()),
                    )
                await self._fill_due(conn)
                recorded_now, grants = await self._bind(conn, fresh=fresh)
        except psycopg.Error as exc:
            raise wrap_error("open", exc) from exc
        if recorded_now and not fresh and self._identity is not None:
            self.adopted = True
            log_adoption(f"schema {self._schema!r} on {self._where}", self._identity, grants)
        self._opened = True

    async def schema_version(self) -> int:
        async with self._operation("schema_version") as conn:
            cur = await conn.execute(
                sql.SQL("SELECT MAX(version) FROM {}.schema_migrations").format(self._ident)
            )
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0
