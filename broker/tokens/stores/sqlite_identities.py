"""Deployment identity rows in the SQLite grant store (table ``deployment_identities``).

:class:`SqliteIdentities` is the :class:`broker.tokens.stores.identities.IdentityLedger` half of
:class:`broker.tokens.stores.sqlite.SqliteGrantStore`, and binds the identity opening the store
inside the migration transaction (see :mod:`broker.tokens.stores.deployment`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

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
from broker.tokens.stores.sqlite_schema import SCHEMA_VERSION

T = TypeVar("T")

_SELECT_IDENTITIES = (
    f"SELECT {', '.join(IDENTITY_COLUMNS)} FROM deployment_identities "  # noqa: S608 (constant)
    "ORDER BY role DESC, recorded_at"
)
_INSERT_IDENTITY = (
    f"INSERT INTO deployment_identities ({', '.join(IDENTITY_COLUMNS)}) "  # noqa: S608 (constant)
    f"VALUES ({', '.join('?' for _ in IDENTITY_COLUMNS)})"
)


class SqliteIdentities:
    """The identity ledger and binding; mixed into the SQLite grant store."""

    if TYPE_CHECKING:
        _clock: Clock
        _path: str
        _identity: DeploymentIdentity | None
        _record_identity: bool
        _owners: tuple[DeploymentIdentity, ...]

        async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        @staticmethod
        def _write(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    def _require_identity(self) -> DeploymentIdentity:
        assert self._identity is not None
        return self._identity

    def _bind(self, c: sqlite3.Connection, *, fresh: bool) -> bool:
        """Compare (and maybe record) the identity inside the migration transaction. Returns
        True when it recorded one."""
        recorded = [recorded_from_row(r) for r in c.execute(_SELECT_IDENTITIES).fetchall()]
        if self._identity is None:
            self._owners = tuple(r.identity for r in recorded)
            return False
        owners = {
            (str(i), str(cid))
            for i, cid in c.execute("SELECT DISTINCT issuer, client_id FROM grants").fetchall()
        }
        record = check_binding(recorded, self._identity, grant_owners=owners, where=self._path)
        if record and self._record_identity:
            how = RecordedHow.CREATED if fresh else RecordedHow.ADOPTED
            c.execute(
                _INSERT_IDENTITY,
                identity_row(
                    self._identity, IdentityRole.PRIMARY, how, SCHEMA_VERSION, self._clock.now()
                ),
            )
        self._owners = (*(r.identity for r in recorded), self._identity)
        return record and self._record_identity

    async def identities(self) -> Sequence[RecordedIdentity]:
        """The deployment identities recorded in this store (primary first)."""
        return await self._run(
            "identities",
            lambda c: [recorded_from_row(r) for r in c.execute(_SELECT_IDENTITIES).fetchall()],
        )

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

        def run(conn: sqlite3.Connection) -> None:
            def tx(c: sqlite3.Connection) -> None:
                try:
                    c.execute(_INSERT_IDENTITY, row)
                except sqlite3.IntegrityError:
                    raise InvalidArgument(
                        f"the identity {identity.describe()} is recorded already"
                    ) from None

            self._write(conn, tx)

        await self._run("add_identity", run)
        return recorded_from_row(row)

    async def set_identity(
        self,
        identity: DeploymentIdentity,
        *,
        state: IdentityState | None = None,
        key_uri: str | None = None,
    ) -> RecordedIdentity:
        """IdentityLedger: change an identity's rotation state and/or key URI."""
        key = (identity.issuer, identity.client_id, identity.did)

        def run(conn: sqlite3.Connection) -> RecordedIdentity:
            def tx(c: sqlite3.Connection) -> RecordedIdentity:
                c.execute(
                    "UPDATE deployment_identities SET state = COALESCE(?, state), "
                    "key_uri = COALESCE(?, key_uri) WHERE issuer = ? AND client_id = ? AND did = ?",
                    (None if state is None else state.value, key_uri, *key),
                )
                found = c.execute(
                    f"SELECT {', '.join(IDENTITY_COLUMNS)} FROM deployment_identities "  # noqa: S608
                    "WHERE issuer = ? AND client_id = ? AND did = ?",
                    key,
                ).fetchone()
                if found is None:
                    raise InvalidArgument(f"the identity {identity.describe()} is not recorded")
                return recorded_from_row(found)

            return self._write(conn, tx)

        return await self._run("set_identity", run)
