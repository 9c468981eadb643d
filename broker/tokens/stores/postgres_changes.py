"""The :class:`broker.tokens.stores.changes.StatusFeed` of the PostgreSQL grant store.

:class:`PostgresChanges` is mixed into :class:`broker.tokens.stores.postgres.PostgresGrantStore`;
the column, its index and the trigger that fills it are migration 9
(:data:`STATUS_CHANGES_MIGRATION`). One statement reads the changed rows and the ``xmin`` of its
own snapshot, the next cursor (see :mod:`broker.tokens.stores.changes`).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from broker.tokens.model import GrantStatus
from broker.tokens.stores.changes import StatusChange, StatusChanges, check_cursor

#: ``{schema}`` is the quoted schema identifier (as in postgres_schema.MIGRATIONS).
STATUS_CHANGES_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE {schema}.grants ADD COLUMN status_xid xid8",
    "CREATE INDEX grants_by_status_xid ON {schema}.grants (status_xid)",
    """
    CREATE FUNCTION {schema}.grants_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.status_xid := pg_current_xact_id();
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER grants_status_changed BEFORE UPDATE OF status ON {schema}.grants
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION {schema}.grants_status_changed()
    """,
)


class PostgresChanges:
    """Grants whose status changed since a cursor; mixed into the PostgreSQL grant store."""

    if TYPE_CHECKING:
        _table: sql.Composed

        def _operation(
            self, operation: str
        ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...

    async def status_changes(self, cursor: int) -> StatusChanges:
        after = check_cursor(cursor)
        query = sql.SQL(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, NULL, NULL "
            "UNION ALL "
            "SELECT NULL, grant_id, status FROM {} WHERE status_xid >= %s::text::xid8"
        ).format(self._table)
        async with self._operation("status_changes") as conn:
            cur = await conn.execute(query, (str(after),))
            rows = await cur.fetchall()
        xmin = next(int(r[0]) for r in rows if r[0] is not None)
        changes = tuple(StatusChange(str(r[1]), GrantStatus(r[2])) for r in rows if r[0] is None)
        return StatusChanges(changes, max(xmin, after))
