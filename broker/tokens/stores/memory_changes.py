"""The :class:`broker.tokens.stores.changes.StatusFeed` of the in-memory grant store.

:class:`MemoryChanges` is mixed into :class:`broker.tokens.stores.memory.MemoryGrantStore`: a
counter numbers status changes, as the SQLite store's ``status_seq`` does. The log is shared by
stores opened with ``shared_with`` (two token cores on one memory store are two replicas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker.tokens.model import Grant
from broker.tokens.stores.changes import StatusChange, StatusChanges, check_cursor


@dataclass
class StatusLog:
    """The last change number of each grant whose status changed."""

    counter: int = 0
    seq: dict[str, int] = field(default_factory=dict)


class MemoryChanges:
    """Grants whose status changed since a cursor; mixed into the memory grant store."""

    if TYPE_CHECKING:
        _grants: dict[str, Grant]
        _status_log: StatusLog

        def _enter(self, operation: str) -> None: ...

    def _status_changed(self, old: Grant, new: Grant) -> None:
        if old.status is not new.status:
            log = self._status_log
            log.counter += 1
            log.seq[new.grant_id] = log.counter

    async def status_changes(self, cursor: int) -> StatusChanges:
        self._enter("status_changes")
        after = check_cursor(cursor)
        log = self._status_log
        changed = sorted((n, g) for g, n in log.seq.items() if n > after and g in self._grants)
        changes = tuple(StatusChange(g, self._grants[g].status) for _, g in changed)
        return StatusChanges(changes, max((n for n, _ in changed), default=after))
