"""The PostgreSQL grant store's cross-replica refresh lock.

:class:`PostgresRefreshLocks` is the ``refresh_lock`` of
:class:`broker.tokens.stores.postgres.PostgresGrantStore`: first a per-grant
:class:`asyncio.Lock` in this process, then ``pg_advisory_lock(hashtext(namespace),
hashtext(grant_id))`` on a session used for nothing else while the refresh runs (see the
store's module docstring for what happens on each exit).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

from broker.tokens.stores.keyed_locks import KeyedLocks
from broker.tokens.stores.postgres_pool import Pool, wrap_error
from broker.tokens.stores.validation import check_grant_id


class PostgresRefreshLocks:
    """Per-grant advisory locks on sessions of their own; mixed into the PostgreSQL grant store."""

    if TYPE_CHECKING:
        _pool: Pool
        _locks: KeyedLocks
        _lock_idle: list[psycopg.AsyncConnection[Any]]
        _lock_idle_max: int
        _lock_namespace: str
        _closed: bool

        def _check_open(self) -> None: ...

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
                    raise wrap_error("refresh_lock", exc) from exc
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
