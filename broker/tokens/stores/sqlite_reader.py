"""The SQLite grant store's reader: a second, read-only connection on a thread of its own, for
the refresh path's read of one grant.

In WAL mode a reader never waits for a writer: the read of a grant no longer queues behind the
group commits (and their fsyncs) on the store's writer thread. A read sees every transaction
committed before it started, so a caller that was answered by a write reads it back.

The row read is opened (its sealed fields decrypted by the sealer) on the same thread, right
after the read statement finished: no SQLite transaction is open during the HSM calls, nothing
waits on the writer thread meanwhile, and the caller gets the grant with one thread hop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from broker.errors import StoreError
from broker.tokens.stores.sqlite_schema import wrap_error

T = TypeVar("T")


class SqliteReader:
    """A read-only connection to ``path`` owned by one thread; open it after the store's
    writer connection opened (and migrated) the file."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grant-store-read")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open_sync)

    def _open_sync(self) -> None:
        if self._conn is not None:
            return
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_timeout)
            try:
                conn.execute(f"PRAGMA busy_timeout={round(self._busy_timeout * 1000)}")
                conn.execute("PRAGMA query_only=ON")
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise wrap_error("open", exc) from exc
        self._conn = conn

    async def run(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on the reader's thread; a SQLite error becomes the store's error."""

        def call() -> T:
            conn = self._conn
            if conn is None:
                raise StoreError("the grant store is not open")
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise wrap_error(operation, exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        except sqlite3.Error as exc:
            raise wrap_error("close", exc) from exc
        finally:
            self._executor.shutdown(wait=True)
