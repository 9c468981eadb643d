"""Group commit for the SQLite grant store: the write transactions that queue up while the
store's thread is busy run as one ``BEGIN IMMEDIATE ... COMMIT``, so one fsync makes them all
durable.

Every write is a function run inside a transaction (as :meth:`SqliteGrantStore._write` runs
one). A caller's ``await`` returns only after the COMMIT that holds its write returned: what a
caller was told is durable is durable, exactly as with one transaction per write (a crash
before that COMMIT loses the whole group, and none of its callers had been answered).

Each write of a group runs in its own SAVEPOINT: a write that raises one of our errors (a
version conflict, a missing grant) is rolled back alone and its caller gets that error; the
others are committed. A SQLite error inside a write (which may have aborted the transaction:
I/O error, disk full, busy) rolls the whole group back and runs each write again in its own
transaction, so each caller gets the outcome it would have had alone. A failed BEGIN or COMMIT
fails every write of the group (nothing of it was committed), each error naming its own
operation.

Writes queue in arrival order; a group takes every write queued when the store's thread gets
to it (at most :data:`MAX_GROUP`), and reads submitted meanwhile run between groups (a group
is one job of the store's single-thread executor, the next group another job).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from broker.errors import StoreError

T = TypeVar("T")
P = TypeVar("P")

#: Most writes one transaction takes (a long queue is committed in several groups).
MAX_GROUP = 64


@dataclass
class _Write(Generic[T]):
    operation: str
    fn: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]


@dataclass
class _Outcome:
    value: Any = None
    error: BaseException | None = None


class GroupCommit:
    """Queues write transactions and commits the queued ones together on the store's thread.

    ``connection()`` (called on that thread) returns the open connection or raises
    :class:`broker.errors.StoreError`; ``wrap(operation, exc)`` turns a SQLite error into the
    store's error for that operation.
    """

    def __init__(
        self,
        executor: Executor,
        connection: Callable[[], sqlite3.Connection],
        wrap: Callable[[str, sqlite3.Error], StoreError],
    ) -> None:
        self._executor = executor
        self._connection = connection
        self._wrap = wrap
        self._lock = threading.Lock()
        self._queue: deque[_Write[Any]] = deque()
        self._scheduled = False
        self.groups = 0  # transactions committed or attempted (for tests and benches)
        self.closed = False  # set by the store's close(): no write is taken any more

    def queued(self) -> int:
        """Writes waiting for the store's thread (not yet taken into a group)."""
        with self._lock:
            return len(self._queue)

    async def write(self, operation: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction, possibly shared with other queued writes;
        returns once that transaction committed."""
        if self.closed:
            raise StoreError("the grant store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._enqueue(loop, _Write(operation, fn, future))
        return await future

    async def write_after(
        self,
        operation: str,
        prepare: Callable[[], P],
        fn: Callable[[sqlite3.Connection, P], T],
    ) -> T:
        """``prepare()`` on the loop's default executor (not the store's thread: it may call
        the HSM), then ``fn(conn, prepared)`` as :meth:`write` runs it, queued from that
        thread directly: one trip back to the event loop instead of two."""
        if self.closed:
            raise StoreError("the grant store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            try:
                prepared = prepare()
            except BaseException as exc:
                loop.call_soon_threadsafe(_fail, future, exc)
                return
            self._enqueue(loop, _Write(operation, lambda c: fn(c, prepared), future))

        loop.run_in_executor(None, run)
        return await future

    def _enqueue(self, loop: asyncio.AbstractEventLoop, write: _Write[Any]) -> None:
        """Queue ``write`` (from any thread) and make sure a group job is on its way."""
        with self._lock:
            self._queue.append(write)
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self._submit(loop)

    def _submit(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._executor.submit(self._drain, loop)
        except RuntimeError:  # the executor is shut down (the store closed meanwhile)
            with self._lock:
                writes = list(self._queue)
                self._queue.clear()
                self._scheduled = False
            _settle([(w, _Outcome(error=StoreError("the grant store is closed"))) for w in writes])

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """One group, on the store's thread; the rest of the queue is the next job."""
        with self._lock:
            count = min(len(self._queue), MAX_GROUP)
            writes = [self._queue.popleft() for _ in range(count)]
        try:
            outcomes = self._commit(writes)
        except BaseException as exc:  # never leave a caller waiting
            outcomes = [_Outcome(error=exc) for _ in writes]
        with self._lock:
            more = bool(self._queue)
            self._scheduled = more
        try:
            loop.call_soon_threadsafe(_settle, list(zip(writes, outcomes, strict=True)))
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            return
        if more:
            self._submit(loop)

    def _commit(self, writes: list[_Write[Any]]) -> list[_Outcome]:
        try:
            conn = self._connection()
        except StoreError as exc:
            return [_Outcome(error=exc) for _ in writes]
        live = [w for w in writes if not w.future.cancelled()]
        if not live:
            return [_Outcome(error=asyncio.CancelledError()) for _ in writes]
        self.groups += 1
        if len(live) == 1:
            done = {id(live[0]): self._alone(conn, live[0])}
        else:
            done = self._together(conn, live)
        return [done.get(id(w)) or _Outcome(error=asyncio.CancelledError()) for w in writes]

    def _alone(self, conn: sqlite3.Connection, write: _Write[Any]) -> _Outcome:
        """One write in its own transaction (as the store wrote before grouping)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = write.fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            return _Outcome(error=_chained(self._wrap(write.operation, exc), exc))
        except Exception as exc:  # our own errors (VersionConflict, GrantNotFound, ...)
            return _Outcome(error=exc)
        return _Outcome(value=value)

    def _together(self, conn: sqlite3.Connection, writes: list[_Write[Any]]) -> dict[int, _Outcome]:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return {
                id(w): _Outcome(error=_chained(self._wrap(w.operation, exc), exc)) for w in writes
            }
        done: dict[int, _Outcome] = {}
        try:
            for write in writes:
                conn.execute("SAVEPOINT grouped_write")
                try:
                    value = write.fn(conn)
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    conn.execute("ROLLBACK TO grouped_write")
                    conn.execute("RELEASE grouped_write")
                    done[id(write)] = _Outcome(error=exc)
                else:
                    conn.execute("RELEASE grouped_write")
                    done[id(write)] = _Outcome(value=value)
        except sqlite3.Error:
            # The transaction may be gone (I/O error, disk full): each write on its own.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return {id(w): self._alone(conn, w) for w in writes}
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return {
                id(w): _Outcome(error=_chained(self._wrap(w.operation, exc), exc)) for w in writes
            }
        return done


def _chained(error: StoreError, cause: BaseException) -> StoreError:
    error.__cause__ = cause
    return error


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _settle(results: list[tuple[_Write[Any], _Outcome]]) -> None:
    """On the event loop: answer every caller of a group (a cancelled one is skipped)."""
    for write, outcome in results:
        if write.future.done():
            continue
        if outcome.error is not None:
            write.future.set_exception(outcome.error)
        else:
            write.future.set_result(outcome.value)
