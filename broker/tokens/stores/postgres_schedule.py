"""The refresh schedule in the PostgreSQL grant store: due times, due queries and refresh claims.

:class:`PostgresSchedule` is the :class:`broker.tokens.stores.base.GrantIndex` /
``RefreshClaims`` half of :class:`broker.tokens.stores.postgres.PostgresGrantStore`.
:meth:`PostgresSchedule.claim_due` picks due rows ``FOR UPDATE SKIP LOCKED`` and leases them in
one statement, so replicas divide the due grants. Nothing here opens a token.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from broker.tokens.model import GrantExpiry, GrantStatus, GrantSummary
from broker.tokens.stores.due import DueRule, due_at
from broker.tokens.stores.sealing import SUMMARY_COLUMNS, grant_expiry, grant_summary
from broker.tokens.stores.validation import (
    check_claim,
    check_due_query,
    check_grant_id,
    check_label,
    check_status,
)


class PostgresSchedule:
    """Due times, due queries and refresh claims; mixed into the PostgreSQL grant store."""

    if TYPE_CHECKING:
        _due_rule: DueRule
        _table: sql.Composed
        _q_summary: sql.Composed

        def _operation(
            self, operation: str
        ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...

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

    async def count_by_status(self, status: GrantStatus) -> int:
        check_status(status)
        async with self._operation("count_by_status") as conn:
            cur = await conn.execute(
                sql.SQL("SELECT COUNT(*) FROM {} WHERE status = %s").format(self._table),
                (status.value,),
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

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
