"""Pending logins in the PostgreSQL grant store (table ``{schema}.pending_logins``).

:class:`PostgresLogins` is the :class:`broker.tokens.stores.logins.LoginStore` half of
:class:`broker.tokens.stores.postgres.PostgresGrantStore`, shared by every replica on the schema.
Each state change is one statement that compares and sets the status
(``UPDATE ... WHERE status = 'pending' ... RETURNING``): of two replicas claiming one login at
once, PostgreSQL's row lock lets exactly one update the row; the other sees the new status and
updates nothing.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from broker.errors import StoreError
from broker.keys.api import Sealer
from broker.tokens.stores.logins import (
    FINISHED,
    LOGIN_COLUMNS,
    LoginRecord,
    LoginStatus,
    record_from_values,
    record_values,
    seal_secrets,
)

#: The migration step that adds the table; ``{schema}`` is the quoted schema identifier.
LOGINS_MIGRATION: tuple[str, ...] = (
    """
    CREATE TABLE {schema}.pending_logins (
        login_id TEXT PRIMARY KEY,
        owner TEXT,
        label TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'exchanging', 'completed', 'failed', 'expired')),
        state_key BYTEA,
        ref_key BYTEA,
        secrets BYTEA,
        expires_at DOUBLE PRECISION NOT NULL,
        restarts INTEGER NOT NULL CHECK (restarts >= 0),
        grant_id TEXT,
        error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        seal_key TEXT NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX pending_logins_by_state ON {schema}.pending_logins (state_key) "
    "WHERE state_key IS NOT NULL",
    "CREATE UNIQUE INDEX pending_logins_by_ref ON {schema}.pending_logins (ref_key) "
    "WHERE ref_key IS NOT NULL",
    "CREATE INDEX pending_logins_by_status ON {schema}.pending_logins (status, expires_at)",
)


class PostgresLogins:
    """The login-store operations; mixed into the PostgreSQL grant store."""

    if TYPE_CHECKING:
        _sealer: Sealer
        _ident: sql.Identifier

        def _operation(
            self, operation: str
        ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...

    def _q(self, template: str) -> sql.Composed:
        return sql.SQL(template).format(
            table=sql.SQL("{}.pending_logins").format(self._ident),
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in LOGIN_COLUMNS),
        )

    async def _one(
        self, operation: str, query: sql.Composed, args: tuple[object, ...]
    ) -> LoginRecord | None:
        async with self._operation(operation) as conn:
            cur = await conn.execute(query, args)
            values = await cur.fetchone()
        if values is None:
            return None
        return await asyncio.to_thread(record_from_values, self._sealer, values)

    async def _count(self, operation: str, query: sql.Composed, args: tuple[object, ...]) -> int:
        async with self._operation(operation) as conn:
            cur = await conn.execute(query, args)
            return int(cur.rowcount)

    async def add_login(self, record: LoginRecord) -> None:
        values = await asyncio.to_thread(record_values, self._sealer, record)
        query = sql.SQL(
            "INSERT INTO {table} ({cols}) VALUES ({values}) ON CONFLICT (login_id) DO NOTHING"
        ).format(
            table=sql.SQL("{}.pending_logins").format(self._ident),
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in LOGIN_COLUMNS),
            values=sql.SQL(", ").join(sql.Placeholder() for _ in values),
        )
        if await self._count("add_login", query, values) != 1:
            raise StoreError(f"login {record.login_id!r} already exists")

    async def login_by_id(self, login_id: str) -> LoginRecord | None:
        return await self._one(
            "login_by_id", self._q("SELECT {cols} FROM {table} WHERE login_id = %s"), (login_id,)
        )

    async def login_by_state(self, state_key: bytes) -> LoginRecord | None:
        return await self._one(
            "login_by_state",
            self._q(
                "SELECT {cols} FROM {table} WHERE state_key = %s "
                "AND status IN ('pending', 'expired')"
            ),
            (state_key,),
        )

    async def login_by_ref(self, ref_key: bytes) -> LoginRecord | None:
        return await self._one(
            "login_by_ref",
            self._q("SELECT {cols} FROM {table} WHERE ref_key = %s AND status = 'pending'"),
            (ref_key,),
        )

    async def claim_login(self, login_id: str, state_key: bytes, now: float) -> LoginRecord | None:
        return await self._one(
            "claim_login",
            self._q(
                "UPDATE {table} SET status = 'exchanging' WHERE login_id = %s "
                "AND status = 'pending' AND state_key = %s AND expires_at > %s RETURNING {cols}"
            ),
            (login_id, state_key, float(now)),
        )

    async def restart_login(self, record: LoginRecord) -> bool:
        sealed = await asyncio.to_thread(
            seal_secrets, self._sealer, record.login_id, record.secrets
        )
        changed = await self._count(
            "restart_login",
            self._q(
                "UPDATE {table} SET status = 'pending', state_key = %s, ref_key = %s, "
                "secrets = %s, expires_at = %s, restarts = %s, seal_key = %s "
                "WHERE login_id = %s AND status = 'exchanging'"
            ),
            (
                record.state_key,
                record.ref_key,
                sealed,
                float(record.expires_at),
                int(record.restarts),
                self._sealer.key_label,
                record.login_id,
            ),
        )
        return changed == 1

    async def finish_login(
        self,
        login_id: str,
        status: LoginStatus,
        *,
        now: float,
        grant_id: str | None = None,
        error: str | None = None,
        expected: LoginStatus,
    ) -> bool:
        if status not in FINISHED:
            raise StoreError("finish_login needs a finished status")
        changed = await self._count(
            "finish_login",
            self._q(
                "UPDATE {table} SET status = %s, grant_id = %s, error = %s, finished_at = %s, "
                "secrets = NULL, ref_key = NULL, "
                "state_key = CASE WHEN %s THEN state_key ELSE NULL END "
                "WHERE login_id = %s AND status = %s"
            ),
            (
                status.value,
                grant_id,
                error,
                float(now),
                status is LoginStatus.EXPIRED,
                login_id,
                expected.value,
            ),
        )
        return changed == 1

    async def count_pending_logins(self, now: float) -> int:
        async with self._operation("count_pending_logins") as conn:
            cur = await conn.execute(
                self._q(
                    "SELECT COUNT(*) FROM {table} WHERE status = 'pending' AND expires_at > %s"
                ),
                (float(now),),
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def prune_logins(self, now: float, *, retention: float, exchange_timeout: float) -> int:
        async with self._operation("prune_logins") as conn, conn.transaction():
            expired = await conn.execute(
                self._q(
                    "UPDATE {table} SET status = 'expired', error = 'login_expired', "
                    "finished_at = %s, secrets = NULL, ref_key = NULL "
                    "WHERE status = 'pending' AND expires_at <= %s"
                ),
                (float(now), float(now)),
            )
            stuck = await conn.execute(
                self._q(
                    "UPDATE {table} SET status = 'failed', error = 'exchange_interrupted', "
                    "finished_at = %s, secrets = NULL, ref_key = NULL, state_key = NULL "
                    "WHERE status = 'exchanging' AND expires_at + %s <= %s"
                ),
                (float(now), float(exchange_timeout), float(now)),
            )
            deleted = await conn.execute(
                self._q("DELETE FROM {table} WHERE finished_at IS NOT NULL AND finished_at <= %s"),
                (float(now) - float(retention),),
            )
            return int(expired.rowcount) + int(stuck.rowcount) + int(deleted.rowcount)
