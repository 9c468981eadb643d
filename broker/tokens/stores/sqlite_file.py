"""The grant database file before SQLite touches it: refuse what is not ours, create atomically.

Only a path that does not exist gets a fresh store. Anything that exists is inspected without
writing a byte, and refused with :class:`broker.errors.StoreUnusable` unless it looks like a
whole SQLite database: not a regular file, empty (0 bytes), shorter than a SQLite header,
without the SQLite magic, a size that is not a whole number of pages, or fewer pages than its
header records (truncated). SQLite itself would happily turn an empty file into a new database,
so these checks run before the first connection. (Whether a real SQLite database holds *our*
tables is checked on the connection: :func:`check_is_grant_store`.)

A fresh store is built at a temporary name next to the target and hard-linked into place once
its schema (and identity record) is committed, so a crash during creation never leaves an empty
or half-made file at the configured path; a link that exists by then is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
import stat
from collections.abc import Callable

from broker.errors import StoreError, StoreUnusable

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100
OUR_TABLES = frozenset({"schema_migrations", "grants"})

_REMOVE = "move it away if a new store is wanted; the broker never overwrites an existing file"


def _unusable(path: str, what: str) -> StoreUnusable:
    return StoreUnusable(f"the grant database {path} {what}: refusing it ({_REMOVE})")


def inspect_existing(path: str) -> None:
    """Raise StoreUnusable unless ``path`` is a plausible, whole SQLite database file.

    Reads at most the 100-byte header; writes nothing.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StoreError(f"cannot read the grant database ({exc.strerror})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _unusable(path, "is not a regular file")
    if st.st_size == 0:
        raise _unusable(path, "is empty (0 bytes)")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise StoreError(f"cannot read the grant database ({exc.strerror})") from exc
    try:
        header = os.read(fd, HEADER_SIZE)
    finally:
        os.close(fd)
    if len(header) < HEADER_SIZE or not header.startswith(SQLITE_MAGIC):
        raise _unusable(path, f"is not a SQLite database ({st.st_size} bytes)")
    page_size = int.from_bytes(header[16:18], "big")
    if page_size == 1:
        page_size = 65536
    if page_size < 512 or page_size & (page_size - 1):
        raise _unusable(path, "has a damaged SQLite header (page size)")
    if st.st_size % page_size:
        raise _unusable(
            path,
            f"is truncated ({st.st_size} bytes is not a whole number of {page_size}-byte pages)",
        )
    pages = int.from_bytes(header[28:32], "big")
    header_valid = header[24:28] == header[92:96]  # "in-header database size" is trustworthy
    if header_valid and pages and st.st_size < pages * page_size:
        raise _unusable(
            path, f"is truncated ({st.st_size} bytes, its header records {pages} pages)"
        )


def check_is_grant_store(conn: sqlite3.Connection, path: str) -> None:
    """On a fresh connection (nothing written yet): the file passes SQLite's ``quick_check``
    and holds our tables. Raise StoreUnusable otherwise."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            raise _unusable(path, f"is not a usable SQLite database ({name})") from exc
        raise
    if [tuple(r) for r in rows] != [("ok",)]:
        raise _unusable(path, "fails SQLite's quick_check (damaged or truncated)")
    tables = {
        str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    missing = OUR_TABLES - tables
    if missing:
        found = ", ".join(sorted(tables)[:5]) or "none"
        raise _unusable(
            path,
            f"is a SQLite database but not a grant store (no {', '.join(sorted(missing))} "
            f"table; tables found: {found})",
        )


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_fresh(path: str, mode: int, initialise: Callable[[sqlite3.Connection], None]) -> bool:
    """Build a new database at a temporary name, run ``initialise`` on it, then link it to
    ``path``. Returns False (and leaves ``path`` alone) when ``path`` appeared meanwhile."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.init-{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        raise StoreError(f"cannot create the grant database ({exc.strerror})") from exc
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            initialise(conn)
        finally:
            conn.close()
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise StoreError(f"cannot create the grant database ({exc.strerror})") from exc
            # No hard links here: rename, which replaces, so only when nothing is there.
            if os.path.lexists(path):
                return False
            os.rename(tmp, path)
        _fsync_dir(directory)
        return True
    except OSError as exc:
        raise StoreError(f"cannot create the grant database ({exc.strerror})") from exc
    finally:
        for leftover in (tmp, tmp + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
