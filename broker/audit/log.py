"""Append-only, hash-chained audit log of key ceremonies (JSON lines).

Each record is one line of compact JSON (UTF-8, keys in a fixed order) ending in ``\\n``::

    {"seq": 1, "time": "2026-11-23T10:44:34.123456Z", "operator": "alice", "host": "hsm-1",
     "action": "keys.generate", "key_uri": "pkcs11:token=broker;object=client-2026;id=%01",
     "did": "did:key:zDn...", "fingerprint": "<sha256 hex>", "outcome": "ok", "error": null,
     "prev": "<sha256 hex>", "hash": "<sha256 hex>"}

* ``prev`` is the SHA-256 (hex) of the previous record's exact line bytes, without its trailing
  newline; ``"0" * 64`` for the first record. Editing, deleting or reordering any record breaks
  the link of the record after it.
* ``hash`` is the SHA-256 of the record's own line with the ``hash`` member removed (the same
  compact serialisation). It makes an edit of the *last* record detectable too.
* ``seq`` counts from 1 without gaps.
* A credential ceremony's record (``keys.credential.*``) has two more members after ``error``:
  ``credential_id`` and ``credential_sha256`` (hex SHA-256 of the credential JWT; not secret).

Writers open the file with ``O_APPEND``, mode 0600, take an exclusive ``flock`` for the whole
read-tail / write / ``fsync`` sequence, so concurrent writers (processes or threads) keep the
chain valid. A file whose last line is incomplete or not a valid record is never appended to: the
writer raises :class:`broker.errors.AuditError` and the operator runs ``audit-verify``.

What the chain cannot show on its own: removal of the newest records (truncation at a line
boundary). Ship the latest ``hash`` somewhere else (a ticket, a second log) to anchor it.

No record ever holds a secret: key URIs are printed without PIN, errors are reason codes.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.clock import Clock, SystemClock
from broker.errors import AuditError

GENESIS = "0" * 64
FIELDS = (
    "seq",
    "time",
    "operator",
    "host",
    "action",
    "key_uri",
    "did",
    "fingerprint",
    "outcome",
    "error",
    "prev",
    "hash",
)
CREDENTIAL_FIELDS = ("credential_id", "credential_sha256")
FIELDS_WITH_CREDENTIAL = (*FIELDS[:-2], *CREDENTIAL_FIELDS, *FIELDS[-2:])
"""A record of a credential ceremony (``keys.credential.*``) names the credential too."""
OUTCOMES = ("ok", "error")
_TAIL_CHUNK = 64 * 1024
_MAX_LINE = 64 * 1024


def default_operator() -> str:
    """The human behind the ceremony: ``$SUDO_USER`` when run through sudo, else the login name."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        return sudo_user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER/$LOGNAME
        return f"uid:{os.getuid()}"


def rfc3339_utc(epoch_seconds: float) -> str:
    """``2026-11-23T10:44:34.123456Z`` (RFC 3339, UTC, microseconds)."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _serialise(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _self_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return _sha256_hex(_serialise(body))


@dataclass(frozen=True)
class AuditRecord:
    """One appended record, as written."""

    seq: int
    time: str
    operator: str
    host: str
    action: str
    key_uri: str | None
    did: str | None
    fingerprint: str | None
    outcome: str
    error: str | None
    prev: str
    hash: str
    line: bytes  # the exact bytes written, without the trailing newline
    credential_id: str | None = None
    credential_sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        names = FIELDS if self.credential_sha256 is None else FIELDS_WITH_CREDENTIAL
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_chain`.

    ``records`` counts the records that verified before the first bad one (all of them when
    ``ok``). ``first_bad_seq`` is the sequence number the first bad record should have had
    (1-based position in the chain), ``None`` when ``ok``. ``reason`` says what is wrong.
    """

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str | None
    last_hash: str | None = None  # ``hash`` of the last good record: anchor it elsewhere


def _check_record(obj: object, expected_seq: int, expected_prev: str) -> str | None:
    """Why ``obj`` is not the valid record number ``expected_seq``; ``None`` when it is."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    if tuple(obj) not in (FIELDS, FIELDS_WITH_CREDENTIAL):
        return "members missing, extra or out of order"
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        return "seq is not an integer"
    if seq != expected_seq:
        return f"seq {seq} where {expected_seq} was expected (deleted or reordered record)"
    for name in ("time", "operator", "host", "action", "prev", "hash", "outcome"):
        if not isinstance(obj[name], str):
            return f"{name} is not a string"
    for name in ("key_uri", "did", "fingerprint", "error", *CREDENTIAL_FIELDS):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            return f"{name} is neither a string nor null"
    if obj["outcome"] not in OUTCOMES:
        return "outcome is neither 'ok' nor 'error'"
    if obj["prev"] != expected_prev:
        return "prev does not match the previous record (edited, deleted or reordered record)"
    if obj["hash"] != _self_hash(obj):
        return "hash does not match the record's content (edited record)"
    return None


def _iter_lines(path: Path) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(line_without_newline, had_newline)`` for each line of ``path``."""
    with path.open("rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                yield raw[:-1], True
            else:
                yield raw, False


def verify_chain(path: str | os.PathLike[str]) -> VerifyResult:
    """Check every link of the audit log at ``path``; report the first broken record.

    Detects edited records (``hash``, and the next record's ``prev``), deleted and reordered
    records (``seq`` and ``prev``), a truncated or unterminated last line and non-JSON lines.
    Raises :class:`broker.errors.AuditError` when the file cannot be read at all.
    """
    file = Path(path)
    prev = GENESIS
    count = 0
    last_hash: str | None = None
    try:
        for line, had_newline in _iter_lines(file):
            expected = count + 1
            if not had_newline:
                return VerifyResult(
                    False, count, expected, "last line is incomplete (truncated write)", last_hash
                )
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                return VerifyResult(False, count, expected, "line is not valid JSON", last_hash)
            problem = _check_record(obj, expected, prev)
            if problem is not None:
                return VerifyResult(False, count, expected, problem, last_hash)
            if _serialise(obj) != line:
                return VerifyResult(
                    False, count, expected, "line is not in canonical form (edited)", last_hash
                )
            prev = _sha256_hex(line)
            last_hash = obj["hash"]
            count = expected
    except FileNotFoundError as exc:
        raise AuditError(f"audit log {file} does not exist") from exc
    except OSError as exc:
        raise AuditError(f"cannot read audit log {file}: {exc.strerror}") from exc
    return VerifyResult(True, count, None, None, last_hash)


def verified_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of the audit log at ``path``, after checking every link of the chain.

    A log that does not exist yet has no records. Raises :class:`broker.errors.AuditError` when
    the chain is broken (nothing is decided on a log that may have been edited) or unreadable.
    """
    file = Path(path)
    if not file.exists():
        return []
    result = verify_chain(file)
    if not result.ok:
        raise AuditError(
            f"audit chain broken at record {result.first_bad_seq}: {result.reason}; "
            "run 'broker keys audit-verify'",
            reason="audit_chain_broken",
        )
    records: list[dict[str, Any]] = []
    try:
        for line, _ in _iter_lines(file):
            if len(records) == result.records:
                break  # records appended since the check are not vouched for
            records.append(json.loads(line))
    except OSError as exc:
        raise AuditError(f"cannot read audit log {file}: {exc.strerror}") from exc
    return records


def _read_tail(fd: int) -> bytes | None:
    """The last line (without newline) of an open file; ``None`` when the file is empty.

    Raises :class:`AuditError` when the file does not end with a newline (an incomplete write).
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        raise AuditError("audit log ends with an incomplete line; run 'broker keys audit-verify'")
    end = size - 1  # position of the final newline
    start = end
    while start > 0:
        step = min(_TAIL_CHUNK, start)
        chunk = os.pread(fd, step, start - step)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            start = start - step + cut + 1
            break
        start -= step
        if end - start > _MAX_LINE:
            raise AuditError("audit log's last line is implausibly long; run audit-verify")
    return os.pread(fd, end - start, start)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AuditLog:
    """Appends records to one audit file. Thread- and process-safe (flock + a thread lock)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        operator: str | None = None,
        host: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.path = Path(path)
        self.operator = operator if operator else default_operator()
        self.host = host if host else socket.gethostname()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AuditLog(path={str(self.path)!r}, operator={self.operator!r})"

    @contextmanager
    def _locked(self) -> Iterator[int]:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        flags |= getattr(os, "O_NOFOLLOW", 0)
        with self._thread_lock:
            try:
                fd = os.open(self.path, flags, 0o600)
            except OSError as exc:
                raise AuditError(f"cannot open audit log {self.path}: {exc.strerror}") from exc
            try:
                try:
                    mode = os.fstat(fd).st_mode
                    if not stat.S_ISREG(mode):
                        raise AuditError(f"audit log {self.path} is not a regular file")
                    if stat.S_IMODE(mode) != 0o600:
                        os.fchmod(fd, 0o600)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as exc:
                    raise AuditError(f"cannot lock audit log {self.path}: {exc.strerror}") from exc
                yield fd
            finally:
                os.close(fd)  # closing releases the flock

    def _next_link(self, fd: int) -> tuple[int, str]:
        tail = _read_tail(fd)
        if tail is None:
            return 1, GENESIS
        try:
            last = json.loads(tail)
        except (ValueError, UnicodeDecodeError):
            last = None
        if not isinstance(last, dict) or not isinstance(last.get("seq"), int):
            raise AuditError("audit log's last record is not valid; run 'broker keys audit-verify'")
        if last.get("hash") != _self_hash(last):
            raise AuditError("audit log's last record was altered; run 'broker keys audit-verify'")
        return int(last["seq"]) + 1, _sha256_hex(tail)

    def check_writable(self) -> None:
        """Open, lock and read the tail without writing: fail before a ceremony, not after."""
        with self._locked() as fd:
            self._next_link(fd)

    def append(
        self,
        action: str,
        *,
        outcome: str,
        key_uri: str | None = None,
        did: str | None = None,
        fingerprint: str | None = None,
        error: str | None = None,
        credential_id: str | None = None,
        credential_sha256: str | None = None,
    ) -> AuditRecord:
        """Append one record under the exclusive lock, ``fsync`` it, and return it.

        ``credential_sha256`` (with ``credential_id``) adds the two credential members after
        ``error``; records without them keep the original member list."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        with self._locked() as fd:
            seq, prev = self._next_link(fd)
            record: dict[str, Any] = {
                "seq": seq,
                "time": rfc3339_utc(self._clock.now()),
                "operator": self.operator,
                "host": self.host,
                "action": action,
                "key_uri": key_uri,
                "did": did,
                "fingerprint": fingerprint,
                "outcome": outcome,
                "error": error,
            }
            if credential_sha256 is not None:
                record["credential_id"] = credential_id
                record["credential_sha256"] = credential_sha256
            record["prev"] = prev
            record["hash"] = _self_hash(record)
            line = _serialise(record)
            data = line + b"\n"
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
                if seq == 1:  # a new file: make its directory entry durable too
                    _fsync_dir(self.path.parent)
            except OSError as exc:
                raise AuditError(f"cannot write audit log {self.path}: {exc.strerror}") from exc
        return AuditRecord(**record, line=line)
