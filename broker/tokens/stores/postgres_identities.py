"""Deployment identity rows in the PostgreSQL grant store (table
``{schema}.deployment_identities``).

:class:`PostgresIdentities` is the :class:`broker.tokens.stores.identities.IdentityLedger` half of
:class:`broker.tokens.stores.postgres.PostgresGrantStore`, and binds the identity opening the
store inside the migration transaction (see :mod:`broker.tokens.stores.deployment`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from broker.clock import Clock
from broker.errors import InvalidArgument
from broker.tokens.stores.deployment import (
    IDENTITY_COLUMNS,
    DeploymentIdentity,
    IdentityRole,
    IdentityState,
    RecordedHow,
    RecordedIdentity,
    check_binding,
    identity_row,
    recorded_from_row,
)
from broker.tokens.stores.postgres_schema import SCHEMA_VERSION


class PostgresIdentities:
    """The identity ledger and binding; mixed into the PostgreSQL grant store."""

    if TYPE_CHECKING:
        _clock: Clock
        _schema: str
        _where: str
        _ident: sql.Identifier
        _table: sql.Composed
        _identity: DeploymentIdentity | None
        _record_identity: bool
        _owners: tuple[DeploymentIdentity, ...]

        def _operation(
            self, operation: str
        ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...

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
