"""Emergency sealed files for refresh results the grant store could not write (G04).

When ``store.rotate`` fails (disk full, read-only file system, I/O error) the token core keeps
the new tokens in memory: the AS may already have rotated the refresh token, so the new one may
be the only valid one. :class:`EmergencyVault` puts such a result on disk outside the store, in
its own directory, so a restart (or a crash) does not lose it: the token core writes one when a
rotation fails and again on shutdown, and re-imports every file into the store on start.

One file per grant (``grant-<sha256(grant id)>.sealed``, the newest result wins), JSON:
``{"format": "broker.emergency.v1", "grant_id": ..., "sealed": <base64>}``. ``sealed`` is the
refresh result (tokens, the store version it rotates from, when it was written) sealed with
the grant store's :class:`broker.keys.api.Sealer` (AES-256-GCM under a key that stays in the
HSM) with the grant id as associated data: the file reveals no token, and a file renamed to
another grant does not open. Writes are crash-safe: temp file (mode 0600, ``O_EXCL``) ->
fsync -> rename -> fsync of the directory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from broker.clock import Clock
from broker.errors import ConfigError, KeyStoreError, StoreError
from broker.keys.api import Sealer
from broker.oauth.types import TokenSet
from broker.tokens.stores.validation import check_grant_id, validate_tokens

_log = logging.getLogger(__name__)

FORMAT = "broker.emergency.v1"
FILE_MODE = 0o600
SUFFIX = ".sealed"
_PREFIX = "grant-"
_TMP_SUFFIX = ".tmp"
_AAD_PREFIX = b"broker.emergency.v1\x00"
MAX_FILE_BYTES = 1024 * 1024


class EmergencyFileError(StoreError):
    """An emergency file could not be written, read or opened. Kept on disk, never deleted."""

    reason = "emergency_file"
    retryable = False


class PersistenceObserver(Protocol):
    """Told whenever the set of grants holding an unpersisted refresh result changes
    (non-empty: health DEGRADED). Synchronous, must not block or raise; ids are not secret."""

    def unpersisted_changed(self, grant_ids: frozenset[str]) -> None: ...


@dataclass(frozen=True)
class EmergencyRecord:
    """One unpersisted refresh result: ``tokens`` rotate the stored grant from ``version``."""

    grant_id: str
    version: int
    tokens: TokenSet = field(repr=False)
    written_at: float


def aad_for(grant_id: str) -> bytes:
    return _AAD_PREFIX + grant_id.encode()


def file_name(grant_id: str) -> str:
    """The grant's file name: a hash, because a grant id may hold any printable character."""
    return _PREFIX + hashlib.sha256(grant_id.encode()).hexdigest() + SUFFIX


def _encode_tokens(tokens: TokenSet) -> dict[str, Any]:
    return {
        "access_token": tokens.access_token,
        "token_type": tokens.token_type,
        "expires_at": tokens.expires_at,
        "received_at": tokens.received_at,
        "scope": tokens.scope,
        "refresh_token": tokens.refresh_token,
        "id_token": tokens.id_token,
        "id_claims": dict(tokens.id_claims),
        "refresh_expires_at": tokens.refresh_expires_at,
    }


def _decode_tokens(doc: object) -> TokenSet:
    if not isinstance(doc, Mapping):
        raise ValueError("tokens is not an object")
    claims = doc.get("id_claims")
    if not isinstance(claims, dict):
        raise ValueError("id_claims is not an object")
    for name in ("expires_at", "received_at"):
        value = doc.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} is not a number")
        if not math.isfinite(value):
            raise ValueError(f"{name} is not finite")
    for name in ("token_type", "scope"):
        if not isinstance(doc.get(name), str):
            raise ValueError(f"{name} is not a string")
    id_token = doc.get("id_token")
    if id_token is not None and not isinstance(id_token, str):
        raise ValueError("id_token is not a string")
    refresh_expires_at = doc.get("refresh_expires_at")  # absent in files of older brokers
    if refresh_expires_at is not None and (
        isinstance(refresh_expires_at, bool)
        or not isinstance(refresh_expires_at, int | float)
        or not math.isfinite(refresh_expires_at)
    ):
        raise ValueError("refresh_expires_at is not a finite number")
    tokens = TokenSet(
        access_token=doc.get("access_token"),  # type: ignore[arg-type]  # validated below
        token_type=doc["token_type"],
        expires_at=float(doc["expires_at"]),
        received_at=float(doc["received_at"]),
        scope=doc["scope"],
        refresh_token=doc.get("refresh_token"),
        id_token=id_token,
        id_claims=claims,
        refresh_expires_at=None if refresh_expires_at is None else float(refresh_expires_at),
    )
    validate_tokens(tokens)
    return tokens


class EmergencyVault:
    """Sealed emergency files in one directory (created 0700 when missing)."""

    def __init__(self, directory: Path, sealer: Sealer, clock: Clock) -> None:
        if not isinstance(directory, Path):
            raise ConfigError("the emergency directory must be a Path")
        self._dir = directory
        self._sealer = sealer
        self._clock = clock

    def __repr__(self) -> str:
        return f"EmergencyVault(directory={str(self._dir)!r}, sealer={self._sealer.key_label!r})"

    @property
    def directory(self) -> Path:
        return self._dir

    def path_for(self, grant_id: str) -> Path:
        return self._dir / file_name(grant_id)

    # --- writing ------------------------------------------------------------------------------

    def write(self, grant_id: str, version: int, tokens: TokenSet) -> Path:
        """Seal and durably write one record (replacing the grant's previous file).

        Raises :class:`EmergencyFileError` (the cause chained) when it cannot be written.
        """
        check_grant_id(grant_id)
        validate_tokens(tokens)
        payload = {
            "grant_id": grant_id,
            "version": version,
            "written_at": self._clock.now(),
            "tokens": _encode_tokens(tokens),
        }
        try:
            sealed = self._sealer.seal(
                json.dumps(payload, separators=(",", ":")).encode(), aad_for(grant_id)
            )
        except KeyStoreError as exc:
            raise EmergencyFileError(
                f"could not seal the emergency record of grant {grant_id!r}: {exc.reason}"
            ) from exc
        document = {
            "format": FORMAT,
            "grant_id": grant_id,
            "sealed": base64.b64encode(sealed).decode("ascii"),
        }
        target = self.path_for(grant_id)
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._atomic_write(target, json.dumps(document).encode())
        except OSError as exc:
            raise EmergencyFileError(
                f"could not write the emergency file of grant {grant_id!r} in {self._dir} "
                f"({type(exc).__name__}, errno {exc.errno})"
            ) from exc
        return target

    def _atomic_write(self, target: Path, data: bytes) -> None:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}{_TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        dfd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # --- reading ------------------------------------------------------------------------------

    def paths(self) -> list[Path]:
        """Every emergency file present (none when the directory does not exist)."""
        try:
            names = sorted(os.listdir(self._dir))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise EmergencyFileError(
                f"could not list the emergency directory {self._dir} ({type(exc).__name__})"
            ) from exc
        return [self._dir / n for n in names if n.startswith(_PREFIX) and n.endswith(SUFFIX)]

    def read(self, path: Path) -> EmergencyRecord:
        """Open one file. Raises :class:`EmergencyFileError` (naming the file, never a
        token) when it is unreadable, malformed, too large, not 0600, or does not open."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise EmergencyFileError(f"emergency file {path} is not a regular file")
                if stat.S_IMODE(info.st_mode) & 0o077:
                    raise EmergencyFileError(
                        f"emergency file {path} is accessible to group or others "
                        f"(mode {stat.S_IMODE(info.st_mode):o}); refusing it"
                    )
                if info.st_size > MAX_FILE_BYTES:
                    raise EmergencyFileError(f"emergency file {path} is too large")
                data = os.read(fd, MAX_FILE_BYTES + 1)
            finally:
                os.close(fd)
        except OSError as exc:
            raise EmergencyFileError(
                f"could not read emergency file {path} ({type(exc).__name__})"
            ) from exc
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ValueError("not an emergency file")
            grant_id = check_grant_id(document.get("grant_id"))
            sealed = base64.b64decode(str(document.get("sealed")), validate=True)
        except (ValueError, UnicodeDecodeError, binascii.Error, StoreError) as exc:
            raise EmergencyFileError(f"emergency file {path} is malformed") from exc
        except Exception as exc:  # InvalidArgument from check_grant_id
            raise EmergencyFileError(f"emergency file {path} is malformed") from exc
        if path.name != file_name(grant_id):
            raise EmergencyFileError(f"emergency file {path} is named for another grant")
        try:
            payload = json.loads(self._sealer.open(sealed, aad_for(grant_id)))
        except KeyStoreError as exc:
            if exc.retryable:
                raise  # HSM unavailable: try again later, the file stays
            raise EmergencyFileError(
                f"emergency file {path} does not open with sealing key {self._sealer.key_label!r}"
            ) from exc
        except ValueError as exc:
            raise EmergencyFileError(f"emergency file {path} holds undecodable data") from exc
        try:
            if not isinstance(payload, dict) or payload.get("grant_id") != grant_id:
                raise ValueError("grant id mismatch")
            version = payload.get("version")
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ValueError("bad version")
            written_at = payload.get("written_at")
            if isinstance(written_at, bool) or not isinstance(written_at, int | float):
                raise ValueError("bad written_at")
            tokens = _decode_tokens(payload.get("tokens"))
        except Exception as exc:
            raise EmergencyFileError(f"emergency file {path} holds an invalid record") from exc
        return EmergencyRecord(grant_id, version, tokens, float(written_at))

    def remove(self, grant_id: str) -> None:
        """Delete the grant's file (once its record is in the store or obsolete)."""
        try:
            self.path_for(grant_id).unlink(missing_ok=True)
            self._fsync_dir()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise EmergencyFileError(
                f"could not delete the emergency file of grant {grant_id!r} ({type(exc).__name__})"
            ) from exc
