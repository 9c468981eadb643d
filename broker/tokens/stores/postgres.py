"""The shared grant store: PostgreSQL, for several broker replicas.

- Durability: a rotation is one committed transaction (``SELECT ... FOR UPDATE``, version check,
  ``UPDATE``); once :meth:`PostgresGrantStore.rotate` returns, the new refresh token is durable.
- Sealing: tokens and id_token claims are stored as sealed ``bytea`` (see
  :mod:`broker.tokens.stores.sealing`); label, subject, status and expiry stay in clear for listing.
- ``refresh_lock(grant_id)``: first a per-grant :class:`asyncio.Lock` in this process (advisory
  locks are re-entrant per session, and one waiter per grant per replica is enough), then
  ``pg_advisory_lock(hashtext(namespace), hashtext(grant_id))`` on a session used for nothing
  else while the refresh runs. On a clean exit the lock is released with ``pg_advisory_unlock``
  and the session kept for the next lock; on any other exit (error, cancellation) the session is
  closed, which frees the lock. If the holder crashes, its session ends and PostgreSQL frees the
  lock (G07). If the lock connection dies during a refresh, exclusion is lost for the rest
  of that refresh; the ``expected_version`` check of :meth:`rotate` still refuses a stale write.
- Connections: a small pool (``pool_size``) of autocommit connections for operations; a
  connection that saw an error is discarded, never reused.
- Migrations: ``schema`` and its tables are created on :meth:`open`, under a transaction-level
  advisory lock so replicas starting together do not race. Only a missing or empty schema is
  initialised: a schema holding tables but not ours (no ``schema_migrations``/``grants``) is
  refused with :class:`broker.errors.StoreUnusable`, never written to.
- Binding: opened with an ``identity``, the store records it when the schema is created (table
  ``deployment_identities``, schema version 2) and refuses any other with
  :class:`broker.errors.DeploymentMismatch`, in the migration transaction (a refused open
  changes nothing). See :mod:`broker.tokens.stores.deployment`.
- Scheduling (schema version 7): ``refresh_due_at`` (indexed for the ACTIVE grants) and the
  refresh lease ``claimed_by``/``claim_until``. :meth:`PostgresGrantStore.claim_due` picks due
  rows ``FOR UPDATE SKIP LOCKED`` and leases them in one statement, so replicas divide the due
  grants; an expired lease (a crashed claimer) is claimed again. Nothing there opens a token.

Layout: this module holds the store class (construction, plumbing, grant CRUD, close); the
schema and migrations are in :mod:`broker.tokens.stores.postgres_schema`, the connection pool in
:mod:`broker.tokens.stores.postgres_pool`, the deployment identity rows in
:mod:`broker.tokens.stores.postgres_identities`, the refresh schedule in
:mod:`broker.tokens.stores.postgres_schedule`, the refresh lock in
:mod:`broker.tokens.stores.postgres_locks` and pending logins in
:mod:`broker.tokens.stores.postgres_logins`, mixed into :class:`PostgresGrantStore`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

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
from broker.tokens.stores.postgres_changes import PostgresChanges
from broker.tokens.stores.postgres_identities import PostgresIdentities
from broker.tokens.stores.postgres_locks import PostgresRefreshLocks
from broker.tokens.stores.postgres_logins import PostgresLogins
from broker.tokens.stores.postgres_pool import Pool, wrap_error
from broker.tokens.stores.postgres_schedule import PostgresSchedule
from broker.tokens.stores.postgres_schema import (
    MIGRATIONS,
    OUR_TABLES,
    SCHEMA_VERSION,
    PostgresMigrations,
)

__all__ = ["MIGRATIONS", "OUR_TABLES", "SCHEMA_VERSION", "PostgresGrantStore"]
from broker.tokens.stores.sealing import (
    COLUMNS,
    SUMMARY_COLUMNS,
    SealedRow,
    open_grant,
    opens_nothing,
    rotation_update,
    seal_grant,
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

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresGrantStore(
    PostgresLogins,
    PostgresIdentities,
    PostgresSchedule,
    PostgresChanges,
    PostgresRefreshLocks,
    PostgresMigrations,
):
    """GrantStore over PostgreSQL (psycopg 3, async). ``await store.open()`` before use, or
    :meth:`connect`."""

    def __init__(
        self,
        dsn: str,
        sealer: Sealer,
        clock: Clock,
        *,
        schema: str = "broker",
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        identity: DeploymentIdentity | None = None,
        record_identity: bool = True,
        due_rule: DueRule = DEFAULT_DUE_RULE,
    ) -> None:
        if not isinstance(schema, str) or not _SCHEMA_RE.match(schema):
            raise ConfigError(
                "the PostgreSQL schema must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"
            )
        if pool_size < 1:
            raise ConfigError("pool_size must be at least 1")
        try:
            info = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise ConfigError("the PostgreSQL DSN is malformed") from exc
        # For repr and messages only: never the password.
        self._where = f"{info.get('host', 'localhost')}/{info.get('dbname', '')}"
        self._schema = schema
        self._sealer = sealer
        self._clock = clock
        self._pool = Pool(dsn, pool_size, connect_timeout, f"broker-grants:{schema}")
        self._locks = KeyedLocks()
        self._lock_idle: list[psycopg.AsyncConnection[Any]] = []
        self._lock_idle_max = pool_size
        self._lock_namespace = f"broker.grant:{schema}"
        self._opened = False
        self._closed = False
        self._identity = identity
        self._record_identity = record_identity
        self._due_rule = due_rule
        self._owners: tuple[DeploymentIdentity, ...] = ()  # grants create() accepts (bound)
        self.adopted = False  # this open recorded the identity of a schema that had none
        ident = sql.Identifier(schema)
        table = sql.SQL("{}.grants").format(ident)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
        self._q_select = sql.SQL("SELECT {cols} FROM {table}").format(cols=cols, table=table)
        insert_cols = (*COLUMNS, "refresh_due_at")
        self._q_insert = sql.SQL(
            "INSERT INTO {table} ({cols}) VALUES ({values}) "
            "ON CONFLICT (grant_id) DO NOTHING RETURNING grant_id"
        ).format(
            table=table,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in insert_cols),
            values=sql.SQL(", ").join(sql.Placeholder() for _ in insert_cols),
        )
        self._summary_cols = sql.SQL(", ").join(sql.Identifier(c) for c in SUMMARY_COLUMNS)
        self._q_summary = sql.SQL("SELECT {cols} FROM {table}").format(
            cols=self._summary_cols, table=table
        )
        self._table = table
        self._cols = cols
        self._ident = ident

    def __repr__(self) -> str:
        return (
            f"PostgresGrantStore(where={self._where!r}, schema={self._schema!r}, "
            f"sealer={self._sealer.key_label!r})"
        )

    @classmethod
    async def connect(
        cls,
        dsn: str,
        sealer: Sealer,
        clock: Clock,
        *,
        schema: str = "broker",
        identity: DeploymentIdentity | None = None,
        record_identity: bool = True,
        due_rule: DueRule = DEFAULT_DUE_RULE,
    ) -> PostgresGrantStore:
        store = cls(
            dsn,
            sealer,
            clock,
            schema=schema,
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

    @property
    def schema(self) -> str:
        return self._schema

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the grant store is closed")

    # --- plumbing ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _operation(self, operation: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        self._check_open()
        if not self._opened:
            raise StoreError("the grant store is not open")
        try:
            async with self._pool.connection(operation) as conn:
                yield conn
        except psycopg.Error as exc:
            raise wrap_error(operation, exc) from exc

    async def _open_row(
        self, values: tuple[Any, ...] | None, grant_id: str, known: TokenSet | None = None
    ) -> Grant:
        if values is None:
            raise GrantNotFound(f"no grant {grant_id!r}")
        row = SealedRow.from_values(values)
        if opens_nothing(row, known):  # no sealer call: no hop
            return open_grant(self._sealer, row, known=known)
        return await asyncio.to_thread(lambda: open_grant(self._sealer, row, known=known))

    async def _update(
        self, operation: str, grant_id: str, columns: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        query = sql.SQL("UPDATE {table} SET {sets} WHERE grant_id = %s RETURNING {cols}").format(
            table=self._table,
            sets=sql.SQL(", ").join(
                sql.SQL("{} = %s").format(sql.Identifier(name)) for name in columns
            ),
            cols=self._cols,
        )
        async with self._operation(operation) as conn:
            cur = await conn.execute(query, (*columns.values(), grant_id))
            return await cur.fetchone()

    # --- GrantStore -------------------------------------------------------------------------

    async def create(self, grant: Grant) -> None:
        row = await asyncio.to_thread(seal_grant, self._sealer, grant)
        check_grant_owner(self._owners, grant.issuer, grant.client_id, grant.grant_id)
        due = self._due(row.grant_id, row.version, row.access_issued_at, row.access_expires_at)
        async with self._operation("create") as conn:
            cur = await conn.execute(self._q_insert, (*row.values(), due))
            inserted = await cur.fetchone()
        if inserted is None:
            raise GrantExists(f"grant {grant.grant_id!r} already exists")

    async def get(self, grant_id: str) -> Grant:
        check_grant_id(grant_id)
        async with self._operation("get") as conn:
            cur = await conn.execute(self._q_select + sql.SQL(" WHERE grant_id = %s"), (grant_id,))
            values = await cur.fetchone()
        return await self._open_row(values, grant_id)

    async def list(self, *, label: str | None = None) -> list[Grant]:
        async with self._operation("list") as conn:
            if label is None:
                cur = await conn.execute(self._q_select + sql.SQL(" ORDER BY grant_id"))
            else:
                check_label(label)
                cur = await conn.execute(
                    self._q_select + sql.SQL(" WHERE label = %s ORDER BY grant_id"), (label,)
                )
            rows = await cur.fetchall()
        return await asyncio.to_thread(
            lambda: [open_grant(self._sealer, SealedRow.from_values(r)) for r in rows]
        )

    # --- GrantIndex / RefreshClaims: clear columns only ---------------------------------------

    async def mark_refresh_started(self, grant_id: str, at: float) -> None:
        check_grant_id(grant_id)
        at = check_time("at", at)
        updated = await self._update(
            "mark_refresh_started",
            grant_id,
            {"refresh_started_at": at, "updated_at": self._clock.now()},
        )
        if updated is None:
            raise GrantNotFound(f"no grant {grant_id!r}")

    async def rotate(
        self,
        grant_id: str,
        tokens: TokenSet,
        *,
        expected_version: int,
        refresh_due_at: float | None = None,
    ) -> Grant:
        """See :meth:`GrantStore.rotate`; ``refresh_due_at`` as for the SQLite store. Sealed
        before the transaction; the given tokens are returned without being opened again."""
        check_grant_id(grant_id)
        check_expected_version(expected_version)
        validate_tokens(tokens)
        due = (
            self._due(grant_id, expected_version + 1, tokens.received_at, tokens.expires_at)
            if refresh_due_at is None
            else check_time("refresh_due_at", refresh_due_at)
        )
        update = await asyncio.to_thread(
            rotation_update, self._sealer, grant_id, tokens, self._clock.now()
        )
        update.update(refresh_due_at=due, claimed_by=None, claim_until=None)
        query = sql.SQL(
            "UPDATE {table} SET {sets}, version = version + 1 WHERE grant_id = %s RETURNING {cols}"
        ).format(
            table=self._table,
            sets=sql.SQL(", ").join(
                sql.SQL("{} = %s").format(sql.Identifier(name)) for name in update
            ),
            cols=self._cols,
        )
        async with self._operation("rotate") as conn, conn.transaction():
            cur = await conn.execute(
                sql.SQL("SELECT version FROM {} WHERE grant_id = %s FOR UPDATE").format(
                    self._table
                ),
                (grant_id,),
            )
            current = await cur.fetchone()
            if current is None:
                raise GrantNotFound(f"no grant {grant_id!r}")
            if int(current[0]) != expected_version:
                raise VersionConflict(
                    f"grant {grant_id!r} is at version {current[0]}, not {expected_version}"
                )
            cur = await conn.execute(query, (*update.values(), grant_id))
            values = await cur.fetchone()
        return await self._open_row(values, grant_id, known=tokens)

    async def set_status(self, grant_id: str, status: GrantStatus, *, reason: str | None) -> Grant:
        check_grant_id(grant_id)
        check_status(status)
        if reason is not None:
            check_reason(reason)
        values = await self._update(
            "set_status",
            grant_id,
            {
                "status": status.value,
                "last_error": reason,
                "refresh_started_at": None,
                "updated_at": self._clock.now(),
                "claimed_by": None,
                "claim_until": None,
            },
        )
        return await self._open_row(values, grant_id)

    async def record_error(self, grant_id: str, reason: str) -> None:
        check_grant_id(grant_id)
        check_reason(reason)
        updated = await self._update(
            "record_error", grant_id, {"last_error": reason, "updated_at": self._clock.now()}
        )
        if updated is None:
            raise GrantNotFound(f"no grant {grant_id!r}")

    async def delete(self, grant_id: str) -> None:
        check_grant_id(grant_id)
        async with self._operation("delete") as conn:
            cur = await conn.execute(
                sql.SQL("DELETE FROM {} WHERE grant_id = %s").format(self._table), (grant_id,)
            )
            deleted = cur.rowcount
        if deleted != 1:
            raise GrantNotFound(f"no grant {grant_id!r}")

    async def ping(self) -> None:
        async with self._operation("ping") as conn:
            await conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(self._table))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._pool.close()
            idle, self._lock_idle = self._lock_idle, []
            for conn in idle:
                await conn.close()
        except psycopg.Error as exc:
            raise wrap_error("close", exc) from exc
