"""Refresh results the store failed to write (G04), and their sealed emergency files.

A refresh whose ``store.rotate`` fails (disk full, read-only file system, I/O error, database
down) keeps the new tokens in memory: its refresh token may be the only valid one now, so it
is written first, without asking the AS again, on the next attempt, and its access token is
never served before that write succeeds. While any grant holds such a result the broker is
DEGRADED (the persistence observer is told on every change). With an
:class:`broker.tokens.emergency.EmergencyVault` the result is also written to a sealed
emergency file at once and again on ``stop()``; ``start()`` re-imports those files into the
store (deleting each once it is stored or obsolete), and keeps a record it cannot store yet in
memory: the old refresh token is never sent again once a newer one exists in memory or in an
emergency file.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from broker.errors import BrokerError, GrantNotFound, StoreError, VersionConflict
from broker.oauth.types import TokenSet
from broker.tokens.cache import TokenCache, observe
from broker.tokens.emergency import (
    EmergencyFileError,
    EmergencyRecord,
    EmergencyVault,
    PersistenceObserver,
)
from broker.tokens.model import GrantStatus
from broker.tokens.stores.base import GrantStore

_log = logging.getLogger("broker.tokens.broker")  # the token core's log name


@dataclass(frozen=True)
class Unpersisted:
    """A refresh result the store failed to write, made from the grant at ``version``."""

    tokens: TokenSet
    version: int

    def __repr__(self) -> str:
        return f"Unpersisted(version={self.version})"


class PendingResults:
    def __init__(
        self,
        store: GrantStore,
        cache: TokenCache,
        emergency: EmergencyVault | None,
        observer: PersistenceObserver | None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._emergency = emergency
        self._observer = observer
        self._pending: dict[str, Unpersisted] = {}

    def grant_ids(self) -> frozenset[str]:
        return frozenset(self._pending)

    def get(self, grant_id: str) -> Unpersisted | None:
        return self._pending.get(grant_id)

    def hold(self, grant_id: str, pending: Unpersisted) -> None:
        self._pending[grant_id] = pending
        self._notify()

    def release(self, grant_id: str) -> None:
        if self._pending.pop(grant_id, None) is not None:
            self._notify()

    async def keep(self, grant_id: str, pending: Unpersisted) -> None:
        """Hold ``pending`` in memory and write its emergency file at once."""
        self.hold(grant_id, pending)
        await self._write_emergency(grant_id, pending)

    async def drop(self, grant_id: str) -> None:
        """The result is stored (or obsolete): forget it and delete its emergency file."""
        self.release(grant_id)
        await self._remove_emergency(grant_id)

    def _notify(self) -> None:
        observer = self._observer
        if observer is not None:
            ids = frozenset(self._pending)
            observe(lambda: observer.unpersisted_changed(ids))

    async def _write_emergency(self, grant_id: str, pending: Unpersisted) -> bool:
        if self._emergency is None:
            return False
        try:
            await asyncio.to_thread(
                self._emergency.write, grant_id, pending.version, pending.tokens
            )
        except EmergencyFileError as exc:
            _log.critical(
                "the refresh result of grant %s is in memory only: %s", grant_id, exc.message
            )
            return False
        return True

    async def _remove_emergency(self, grant_id: str) -> None:
        if self._emergency is None:
            return
        try:
            await asyncio.to_thread(self._emergency.remove, grant_id)
        except EmergencyFileError as exc:
            # Harmless: on start an emergency record older than the store's is deleted.
            _log.warning("%s", exc.message)

    async def flush(self) -> list[str]:
        """Write every unpersisted refresh result to its emergency file; returns the grant
        ids written. A result that cannot be written is logged CRITICAL (it would be lost)."""
        written = []
        for grant_id, pending in list(self._pending.items()):
            if await self._write_emergency(grant_id, pending):
                written.append(grant_id)
            elif self._emergency is None:
                _log.critical(
                    "grant %s: its newest refresh token was never stored and no emergency "
                    "directory is configured; it is lost at exit",
                    grant_id,
                )
        return written

    async def import_all(self) -> list[str]:
        """Store the records of every emergency file; returns the grant ids stored.

        A file whose grant is gone, dead or already newer in the store is deleted. A record
        the store cannot take now is kept in memory (DEGRADED) and on disk: it is written
        before that grant's next refresh. An unreadable file is logged and left in place.
        """
        if self._emergency is None:
            return []
        try:
            paths = await asyncio.to_thread(self._emergency.paths)
        except EmergencyFileError as exc:
            _log.error("%s", exc.message)
            return []
        imported = []
        for path in paths:
            try:
                record = await asyncio.to_thread(self._emergency.read, path)
            except (EmergencyFileError, BrokerError) as exc:
                _log.error("emergency file not imported (kept): %s", exc.message)
                continue
            if await self._import(record):
                imported.append(record.grant_id)
        return imported

    async def _import(self, record: EmergencyRecord) -> bool:
        grant_id = record.grant_id
        try:
            async with self._store.refresh_lock(grant_id):
                try:
                    grant = await self._store.get(grant_id)
                except GrantNotFound:
                    _log.warning("emergency record of deleted grant %s dropped", grant_id)
                    await self._remove_emergency(grant_id)
                    return False
                if grant.status is not GrantStatus.ACTIVE or grant.version > record.version:
                    _log.warning(
                        "emergency record of grant %s is obsolete (status %s, stored version "
                        "%d, record version %d): dropped",
                        grant_id,
                        grant.status.value,
                        grant.version,
                        record.version,
                    )
                    await self._remove_emergency(grant_id)
                    return False
                if grant.version < record.version:
                    _log.error(
                        "emergency record of grant %s is ahead of the store (version %d < %d):"
                        " kept, not imported",
                        grant_id,
                        grant.version,
                        record.version,
                    )
                    return False
                stored = await self._store.rotate(
                    grant_id, record.tokens, expected_version=record.version
                )
        except VersionConflict:
            _log.warning("emergency record of grant %s raced another rotation: dropped", grant_id)
            await self._remove_emergency(grant_id)
            return False
        except StoreError as exc:
            self.hold(grant_id, Unpersisted(record.tokens, record.version))
            _log.error(
                "emergency record of grant %s could not be stored yet (%s): kept in memory",
                grant_id,
                exc.reason,
            )
            return False
        self.release(grant_id)
        self._cache.put(stored, record.tokens)
        await self._remove_emergency(grant_id)
        _log.info("emergency record of grant %s imported into the store", grant_id)
        return True
