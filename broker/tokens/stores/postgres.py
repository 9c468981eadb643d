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
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from broker.clock import Clock
from broker.errors import (
    BrokerError,
    ConfigError,
    GrantExists,
    GrantNotFound,
    InvalidArgument,
    StoreError,
    StoreUnusable,
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
from broker.tokens.stores.postgres_logins import LOGINS_MIGRATION, PostgresLogins
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

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

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
)
OUR_TABLES = frozenset({"schema_migrations", "grants"})
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _wrap(operation: str, exc: psycopg.Error) -> StoreError:
    """A StoreError naming the operation and the SQLSTATE, never a value or the DSN."""
    code = exc.sqlstate or type(exc).__name__
    return StoreError(f"postgres {operation} failed ({code})")


class _Pool:
    """At most ``size`` autocommit connections; a connection that saw an error is closed."""

    def __init__(self, dsn: str, size: int, connect_timeout: float, application_name: str) -> None:
        self._dsn = dsn
        self._timeout = connect_timeout
        self._application_name = application_name
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)

    async def new_connection(self, operation: str) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self._timeout)),
                application_name=self._application_name,
                # Notice a vanished server (or a partition) instead of waiting forever.
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
        except psycopg.Error as exc:
            raise _wrap(f"{operation} (connect)", exc) from exc

    @asynccontextmanager
    async def connection(self, operation: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self.new_connection(operation)
            healthy = False
            try:
                yield conn
                healthy = True
            except BrokerError:
                healthy = True  # our own decision (not found, conflict): the session is fine
                raise
            finally:
                if (
                    healthy
                    and not conn.closed
                    and conn.info.transaction_status == TransactionStatus.IDLE
                ):
                    self._idle.append(conn)
                else:
                    await conn.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


class PostgresGrantStore(PostgresLogins):
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
        self._pool = _Pool(dsn, pool_size, connect_timeout, f"broker-grants:{schema}")
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

    # --- migrations -------------------------------------------------------------------------

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
            raise _wrap("open", exc) from exc
        if recorded_now and not fresh and self._identity is not None:
            self.adopted = True
            log_adoption(f"schema {self._schema!r} on {self._where}", self._identity, grants)
        self._opened = True

    async def _fill_due(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Give grants without one (stored before schema 7, or rescheduled) their due time
        (clear columns only)."""
        cur = await conn.execute(
            sql.SQL(
                "SELECT grant_id, version, access_issued_at, access_expires_at FROM {} "
                "WHERE refresh_due_at IS NULL"
            ).format(self._table)
        )
        rows = await cur.fetchall()
        if rows:
            async with conn.cursor() as c:
                await c.executemany(
                    sql.SQL("UPDATE {} SET refresh_due_at = %s WHERE grant_id = %s").format(
                        self._table
                    ),
                    [
                        (self._due(str(gid), int(v), issued, float(expires)), gid)
                        for gid, v, issued, expires in rows
                    ],
                )
        return len(rows)

    def _due(self, grant_id: str, version: int, issued: float | None, expires: float) -> float:
        return due_at(self._due_rule, grant_id, version, issued_at=issued, expires_at=expires)

    def _q_identities(self) -> sql.Composed:
        return sql.SQL(
            "SELECT {cols} FROM {}.deployment_identities ORDER BY role DESC, recorded_at"
        ).format(self._ident, cols=sql.SQL(", ").join(sql.Identifier(c) for c in IDENTITY_COLUMNS))

    async def _bind(self, conn: psycopg.AsyncConnection[Any], *, fresh: bool) -> tuple[bool, int]:
        """Compare (and maybe record) the identity in the open transaction. Returns whether it
        recorded one, and the number of grants."""
        cur = await conn.execute(self._q_identities())
        recorded = [recorded_from_row(r) for r in await cur.fetchall()]
        if self._identity is None:
            self._owners = tuple(r.identity for r in recorded)
            return False, 0
        cur = await conn.execute(
            sql.SQL("SELECT issuer, client_id, COUNT(*) FROM {} GROUP BY issuer, client_id").format(
                self._table
            )
        )
        counts = await cur.fetchall()
        owners = {(str(r[0]), str(r[1])) for r in counts}
        grants = sum(int(r[2]) for r in counts)
        where = f"schema {self._schema!r} on {self._where}"
        record = check_binding(recorded, self._identity, grant_owners=owners, where=where)
        if record and self._record_identity:
            how = RecordedHow.CREATED if fresh else RecordedHow.ADOPTED
            await conn.execute(
                sql.SQL("INSERT INTO {}.deployment_identities ({cols}) VALUES ({vals})").format(
                    self._ident,
                    cols=sql.SQL(", ").join(sql.Identifier(c) for c in IDENTITY_COLUMNS),
                    vals=sql.SQL(", ").join(sql.Placeholder() for _ in IDENTITY_COLUMNS),
                ),
                identity_row(
                    self._identity, IdentityRole.PRIMARY, how, SCHEMA_VERSION, self._clock.now()
                ),
            )
        self._owners = (*(r.identity for r in recorded), self._identity)
        return record and self._record_identity, grants

    async def identities(self) -> Sequence[RecordedIdentity]:
        """The deployment identities recorded in this schema (primary first)."""
        async with self._operation("identities") as conn:
            cur = await conn.execute(self._q_identities())
            rows = await cur.fetchall()
        return [recorded_from_row(r) for r in rows]

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
        query = sql.SQL(
            "INSERT INTO {}.deployment_identities ({cols}) VALUES ({vals}) ON CONFLICT DO NOTHING "
            "RETURNING did"
        ).format(
            self._ident,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in IDENTITY_COLUMNS),
            vals=sql.SQL(", ").join(sql.Placeholder() for _ in IDENTITY_COLUMNS),
        )
        async with self._operation("add_identity") as conn:
            cur = await conn.execute(query, row)
            inserted = await cur.fetchone()
        if inserted is None:
            raise InvalidArgument(f"the identity {identity.describe()} is recorded already")
        return recorded_from_row(row)

    async def set_identity(
        self,
        identity: DeploymentIdentity,
        *,
        state: IdentityState | None = None,
        key_uri: str | None = None,
    ) -> RecordedIdentity:
        """IdentityLedger: change an identity's rotation state and/or key URI."""
        query = sql.SQL(
            "UPDATE {}.deployment_identities SET state = COALESCE(%s, state), "
            "key_uri = COALESCE(%s, key_uri) WHERE issuer = %s AND client_id = %s AND did = %s "
            "RETURNING {cols}"
        ).format(self._ident, cols=sql.SQL(", ").join(sql.Identifier(c) for c in IDENTITY_COLUMNS))
        params = (
            None if state is None else state.value,
            key_uri,
            identity.issuer,
            identity.client_id,
            identity.did,
        )
        async with self._operation("set_identity") as conn:
            cur = await conn.execute(query, params)
            found = await cur.fetchone()
        if found is None:
            raise InvalidArgument(f"the identity {identity.describe()} is not recorded")
        return recorded_from_row(found)

    async def expiries(self) -> Sequence[GrantExpiry]:
        """The expiry columns of every ACTIVE grant (clear columns only: no token is opened)."""
        query = sql.SQL(
            "SELECT grant_id, access_expires_at, access_issued_at, refresh_expires_at "
            "FROM {} WHERE status = %s ORDER BY grant_id"
        ).format(self._table)
        async with self._operation("expiries") as conn:
            cur = await conn.execute(query, (GrantStatus.ACTIVE.value,))
            rows = await cur.fetchall()
        return [grant_expiry(r) for r in rows]

    async def schema_version(self) -> int:
        async with self._operation("schema_version") as conn:
            cur = await conn.execute(
                sql.SQL("SELECT MAX(version) FROM {}.schema_migrations").format(self._ident)
            )
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

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
            raise _wrap(operation, exc) from exc

    async def _open_row(
        self, values: tuple[Any, ...] | None, grant_id: str, known: TokenSet | None = None
    ) -> Grant:
        if values is None:
            raise GrantNotFound(f"no grant {grant_id!r}")
        row = SealedRow.from_values(values)
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

    async def list_metadata(self, *, label: str | None = None) -> builtins.list[GrantSummary]:
        async with self._operation("list_metadata") as conn:
            if label is None:
                cur = await conn.execute(self._q_summary + sql.SQL(" ORDER BY grant_id"))
            else:
                check_label(label)
                cur = await conn.execute(
                    self._q_summary + sql.SQL(" WHERE label = %s ORDER BY grant_id"), (label,)
                )
            rows = await cur.fetchall()
        return [grant_summary(r) for r in rows]

    async def reschedule(self, rule: DueRule) -> int:
        if rule == self._due_rule:
            return 0
        self._due_rule = rule
        async with self._operation("reschedule") as conn, conn.transaction():
            await conn.execute(
                sql.SQL("UPDATE {} SET refresh_due_at = NULL WHERE status = 'active'").format(
                    self._table
                )
            )
            return await self._fill_due(conn)

    async def due(
        self, now: float, *, horizon: float = 0.0, limit: int = 1000
    ) -> builtins.list[GrantSummary]:
        now, horizon, limit = check_due_query(now, horizon, limit)
        async with self._operation("due") as conn:
            cur = await conn.execute(
                self._q_summary
                + sql.SQL(
                    " WHERE status = 'active' AND refresh_due_at <= %s "
                    "ORDER BY refresh_due_at, grant_id LIMIT %s"
                ),
                (now + horizon, limit),
            )
            rows = await cur.fetchall()
        return [grant_summary(r) for r in rows]

    async def claim_due(
        self, now: float, *, owner: str, lease: float, horizon: float = 0.0, limit: int = 1000
    ) -> builtins.list[GrantSummary]:
        now, horizon, limit = check_due_query(now, horizon, limit)
        owner, lease = check_claim(owner, lease)
        query = sql.SQL(
            "WITH picked AS (SELECT grant_id FROM {table} "
            "WHERE status = 'active' AND refresh_due_at <= %s "
            "AND (claim_until IS NULL OR claim_until <= %s) "
            "ORDER BY refresh_due_at, grant_id LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE {table} AS g SET claimed_by = %s, claim_until = %s FROM picked "
            "WHERE g.grant_id = picked.grant_id RETURNING {cols}"
        ).format(
            table=self._table,
            cols=sql.SQL(", ").join(sql.Identifier("g", c) for c in SUMMARY_COLUMNS),
        )
        async with self._operation("claim_due") as conn:
            cur = await conn.execute(query, (now + horizon, now, limit, owner, now + lease))
            rows = await cur.fetchall()
        claimed = [grant_summary(r) for r in rows]
        return sorted(claimed, key=lambda g: (g.refresh_due_at, g.grant_id))

    async def release_claim(self, grant_id: str, *, owner: str) -> None:
        check_grant_id(grant_id)
        owner, _ = check_claim(owner, 1.0)
        async with self._operation("release_claim") as conn:
            await conn.execute(
                sql.SQL(
                    "UPDATE {} SET claimed_by = NULL, claim_until = NULL "
                    "WHERE grant_id = %s AND claimed_by = %s"
                ).format(self._table),
                (grant_id, owner),
            )

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

    def refresh_lock(self, grant_id: str) -> AbstractAsyncContextManager[None]:
        """Cross-replica per-grant lock: an advisory lock on a connection of its own."""
        check_grant_id(grant_id)
        return self._refresh_lock(grant_id)

    async def _lock_session(self, grant_id: str) -> psycopg.AsyncConnection[Any]:
        """A session that holds the advisory lock of ``grant_id`` (waits for it).

        An idle lock session is reused; if it turns out dead, one fresh session is tried."""
        while True:
            pooled = bool(self._lock_idle)
            conn = (
                self._lock_idle.pop() if pooled else await self._pool.new_connection("refresh_lock")
            )
            try:
                await conn.execute(
                    "SELECT pg_advisory_lock(hashtext(%s), hashtext(%s))",
                    (self._lock_namespace, grant_id),
                )
                return conn
            except psycopg.Error as exc:
                await conn.close()
                if not pooled:
                    raise _wrap("refresh_lock", exc) from exc
            except BaseException:
                await conn.close()  # cancelled while waiting: ending the session drops the request
                raise

    @asynccontextmanager
    async def _refresh_lock(self, grant_id: str) -> AsyncIterator[None]:
        self._check_open()
        async with self._locks.hold(grant_id):
            conn = await self._lock_session(grant_id)
            released = False
            try:
                yield
                with contextlib.suppress(psycopg.Error):
                    cur = await conn.execute(
                        "SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))",
                        (self._lock_namespace, grant_id),
                    )
                    released = await cur.fetchone() == (True,)
            finally:
                if (
                    released
                    and not self._closed
                    and len(self._lock_idle) < self._lock_idle_max
                    and conn.info.transaction_status == TransactionStatus.IDLE
                ):
                    self._lock_idle.append(conn)
                else:
                    # Ends the session: frees the lock on every other path (error, cancellation).
                    await conn.close()

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
            raise _wrap("close", exc) from exc
