"""The :class:`broker.tokens.stores.changes.StatusFeed` of the SQLite grant store.

:class:`SqliteChanges` is mixed into :class:`broker.tokens.stores.sqlite.SqliteGrantStore`; the
column, its index, the counter and the trigger that fills them are migration 9
(:data:`STATUS_CHANGES_MIGRATION`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from broker.tokens.model import GrantStatus
from broker.tokens.stores.changes import StatusChange, StatusChanges, check_cursor

T = TypeVar("T")

#: Every status change takes the next value of a one-row counter (not MAX(status_seq) + 1: a
#: deleted grant would give its number out again) under the write lock, so numbers follow
#: commits.
STATUS_CHANGES_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE grants ADD COLUMN status_seq INTEGER",
    "CREATE INDEX grants_by_status_seq ON grants (status_seq)",
    "CREATE TABLE grant_status_seq (n INTEGER NOT NULL) STRICT",
    "INSERT INTO grant_status_seq (n) VALUES (0)",
    """
    CREATE TRIGGER grants_status_changed AFTER UPDATE OF status ON grants
    FOR EACH ROW WHEN NEW.status IS NOT OLD.status
    BEGIN
        UPDATE grant_status_seq SET n = n + 1;
        UPDATE grants SET status_seq = (SELECT n FROM grant_status_seq)
        WHERE grant_id = NEW.grant_id;
    END
    """,
)

_SELECT = "SELECT grant_id, status, status_seq FROM grants WHERE status_seq > ?"


class SqliteChanges:
    """Grants whose status changed since a cursor; mixed into the SQLite grant store."""

    if TYPE_CHECKING:

        async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def status_changes(self, cursor: int) -> StatusChanges:
        after = check_cursor(cursor)

        def read(c: sqlite3.Connection) -> StatusChanges:
            rows = c.execute(_SELECT, (after,)).fetchall()
            changes = tuple(StatusChange(str(r[0]), GrantStatus(r[1])) for r in rows)
            return StatusChanges(changes, max((int(r[2]) for r in rows), default=after))

        return await self._run("status_changes", read)
