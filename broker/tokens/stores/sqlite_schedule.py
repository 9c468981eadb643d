"""The refresh schedule in the SQLite grant store: due times, due queries and refresh claims.

:class:`SqliteSchedule` is the :class:`broker.tokens.stores.base.GrantIndex` /
``RefreshClaims`` half of :class:`broker.tokens.stores.sqlite.SqliteGrantStore`. It reads and
writes clear columns only: nothing here opens a token (see :mod:`broker.tokens.stores.due`).
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

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

T = TypeVar("T")

_SELECT_SUMMARY = f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM grants"  # noqa: S608 (constant)
_DUE_WHERE = "status = 'active' AND refresh_due_at <= ?"  # literal: the partial index applies


class SqliteSchedule:
    """Due times, due queries and refresh claims; mixed into the SQLite grant store."""

    if TYPE_CHECKING:
        _due_rule: DueRule

        async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        @staticmethod
        def _write(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T: ...

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

    async def count_by_status(self, status: GrantStatus) -> int:
        check_status(status)

        def count(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COUNT(*) FROM grants WHERE status = ?", (status.value,)
            ).fetchone()
            return int(row[0]) if row else 0

        return await self._run("count_by_status", count)

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
