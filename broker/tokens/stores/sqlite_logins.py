"""Pending logins in the SQLite grant store (table ``pending_logins``).

:class:`SqliteLogins` is the :class:`broker.tokens.stores.logins.LoginStore` half of
:class:`broker.tokens.stores.sqlite.SqliteGrantStore`; every write is one ``BEGIN IMMEDIATE``
transaction on the store's worker thread, and every state change a compare-and-set on the
status (``UPDATE ... WHERE status = ? RETURNING``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

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

T = TypeVar("T")

#: The migration step that adds the table (its version number is chosen in sqlite.py).
LOGINS_MIGRATION: tuple[str, ...] = (
    """
    CREATE TABLE pending_logins (
        login_id TEXT PRIMARY KEY,
        owner TEXT,
        label TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'exchanging', 'completed', 'failed', 'expired')),
        state_key BLOB,
        ref_key BLOB,
        secrets BLOB,
        expires_at REAL NOT NULL,
        restarts INTEGER NOT NULL CHECK (restarts >= 0),
        grant_id TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        finished_at REAL,
        seal_key TEXT NOT NULL
    ) STRICT
    """,
    "CREATE UNIQUE INDEX pending_logins_by_state ON pending_logins (state_key) "
    "WHERE state_key IS NOT NULL",
    "CREATE UNIQUE INDEX pending_logins_by_ref ON pending_logins (ref_key) "
    "WHERE ref_key IS NOT NULL",
    "CREATE INDEX pending_logins_by_status ON pending_logins (status, expires_at)",
)

_COLS = ", ".join(LOGIN_COLUMNS)
_SELECT = f"SELECT {_COLS} FROM pending_logins"  # noqa: S608 (constant column list)


class SqliteLogins:
    """The login-store operations; mixed into the SQLite grant store."""

    if TYPE_CHECKING:
        _sealer: Sealer

        async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        @staticmethod
        def _write(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    def _one(
        self, conn: sqlite3.Connection, query: str, args: tuple[object, ...]
    ) -> LoginRecord | None:
        values = conn.execute(query, args).fetchone()
        return None if values is None else record_from_values(self._sealer, values)

    async def add_login(self, record: LoginRecord) -> None:
        values = record_values(self._sealer, record)
        sql = f"INSERT INTO pending_logins ({_COLS}) VALUES ({', '.join('?' for _ in values)})"  # noqa: S608

        def tx(c: sqlite3.Connection) -> None:
            if c.execute(
                "SELECT 1 FROM pending_logins WHERE login_id = ?", (record.login_id,)
            ).fetchone():
                raise StoreError(f"login {record.login_id!r} already exists")
            c.execute(sql, values)

        await self._run("add_login", lambda conn: self._write(conn, tx))

    async def login_by_id(self, login_id: str) -> LoginRecord | None:
        return await self._run(
            "login_by_id", lambda c: self._one(c, f"{_SELECT} WHERE login_id = ?", (login_id,))
        )

    async def login_by_state(self, state_key: bytes) -> LoginRecord | None:
        return await self._run(
            "login_by_state",
            lambda c: self._one(
                c,
                f"{_SELECT} WHERE state_key = ? AND status IN ('pending', 'expired')",
                (state_key,),
            ),
        )

    async def login_by_ref(self, ref_key: bytes) -> LoginRecord | None:
        return await self._run(
            "login_by_ref",
            lambda c: self._one(
                c, f"{_SELECT} WHERE ref_key = ? AND status = 'pending'", (ref_key,)
            ),
        )

    async def claim_login(self, login_id: str, state_key: bytes, now: float) -> LoginRecord | None:
        query = (
            "UPDATE pending_logins SET status = 'exchanging' WHERE login_id = ? "  # noqa: S608
            f"AND status = 'pending' AND state_key = ? AND expires_at > ? RETURNING {_COLS}"
        )
        return await self._run(
            "claim_login",
            lambda conn: self._write(
                conn, lambda c: self._one(c, query, (login_id, state_key, float(now)))
            ),
        )

    async def restart_login(self, record: LoginRecord) -> bool:
        sealed = seal_secrets(self._sealer, record.login_id, record.secrets)

        def tx(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE pending_logins SET status = 'pending', state_key = ?, ref_key = ?, "
                "secrets = ?, expires_at = ?, restarts = ?, seal_key = ? "
                "WHERE login_id = ? AND status = 'exchanging'",
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
            return cur.rowcount == 1

        return await self._run("restart_login", lambda conn: self._write(conn, tx))

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
        keep_state = status is LoginStatus.EXPIRED

        def tx(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE pending_logins SET status = ?, grant_id = ?, error = ?, finished_at = ?, "
                "secrets = NULL, ref_key = NULL, "
                "state_key = CASE WHEN ? THEN state_key ELSE NULL END "
                "WHERE login_id = ? AND status = ?",
                (status.value, grant_id, error, float(now), keep_state, login_id, expected.value),
            )
            return cur.rowcount == 1

        return await self._run("finish_login", lambda conn: self._write(conn, tx))

    async def count_pending_logins(self, now: float) -> int:
        def read(c: sqlite3.Connection) -> int:
            row = c.execute(
                "SELECT COUNT(*) FROM pending_logins WHERE status = 'pending' AND expires_at > ?",
                (float(now),),
            ).fetchone()
            return int(row[0]) if row else 0

        return await self._run("count_pending_logins", read)

    async def prune_logins(self, now: float, *, retention: float, exchange_timeout: float) -> int:
        def tx(c: sqlite3.Connection) -> int:
            expired = c.execute(
                "UPDATE pending_logins SET status = 'expired', error = 'login_expired', "
                "finished_at = ?, secrets = NULL, ref_key = NULL "
                "WHERE status = 'pending' AND expires_at <= ?",
                (float(now), float(now)),
            ).rowcount
            stuck = c.execute(
                "UPDATE pending_logins SET status = 'failed', error = 'exchange_interrupted', "
                "finished_at = ?, secrets = NULL, ref_key = NULL, state_key = NULL "
                "WHERE status = 'exchanging' AND expires_at + ? <= ?",
                (float(now), float(exchange_timeout), float(now)),
            ).rowcount
            deleted = c.execute(
                "DELETE FROM pending_logins WHERE finished_at IS NOT NULL AND finished_at <= ?",
                (float(now) - float(retention),),
            ).rowcount
            return int(expired) + int(stuck) + int(deleted)

        return await self._run("prune_logins", lambda conn: self._write(conn, tx))
