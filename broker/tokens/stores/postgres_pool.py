"""The PostgreSQL grant store's connections: a small pool of autocommit sessions, and the one
way a driver error becomes a :class:`broker.errors.StoreError` (the operation and the SQLSTATE,
never a value or the DSN).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from broker.errors import BrokerError, StoreError


def wrap_error(operation: str, exc: psycopg.Error) -> StoreError:
    """A StoreError naming the operation and the SQLSTATE, never a value or the DSN."""
    code = exc.sqlstate or type(exc).__name__
    return StoreError(f"postgres {operation} failed ({code})")


class Pool:
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
            raise wrap_error(f"{operation} (connect)", exc) from exc

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
