"""Status changes of grants, read by every replica (the :class:`StatusFeed` role).

Replicas sharing one store each keep cached access tokens; a grant revoked (or ended by a key
retirement) through one replica must stop being served by the others within a short bound
(:mod:`broker.tokens.status_watch` polls this feed every ``[tokens] status_poll_interval``).

Each store records, in a clear indexed column, where in its own order a grant's status last
changed, so "what changed since my cursor?" is one range query on an index that returns nothing
when nothing changed, whatever the number of grants:

- SQLite: ``status_seq``, from a one-row counter bumped by a trigger on every status change.
  Writers are serialised, so the counter's order is the commit order and the cursor is the
  largest ``status_seq`` read.
- PostgreSQL: ``status_xid``, the id of the transaction that changed the status (a trigger).
  Transaction ids are not assigned in commit order, so the cursor is the ``xmin`` of the reading
  statement's snapshot: every transaction below it had ended when the rows were read, and any
  transaction that commits later has an id of at least that ``xmin``. A change may be reported
  by several passes (while an older transaction is still open anywhere on the server: the
  horizon is cluster-wide, so another database's or application's long transaction holds it
  back too); never missed. Re-applying a status is idempotent.
- memory: a counter, as SQLite.

The trigger sees every status change whatever writes it (``set_status`` of a revocation, a dead
refresh token, ``broker keys rotate retire --force``), so no write path needs to remember it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from broker.errors import InvalidArgument
from broker.tokens.model import GrantStatus


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A grant whose status changed since the cursor, with its status now."""

    grant_id: str
    status: GrantStatus


@dataclass(frozen=True, slots=True)
class StatusChanges:
    changes: tuple[StatusChange, ...]
    cursor: int
    """Give it to the next :meth:`StatusFeed.status_changes` call."""


class StatusFeed(Protocol):
    async def status_changes(self, cursor: int) -> StatusChanges:
        """The grants whose status changed since ``cursor`` (0: since the store was created),
        with their current status, and the cursor of the next call. A change committed after
        this call is reported by a later one; one may be reported more than once."""
        ...


def check_cursor(cursor: object) -> int:
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
        raise InvalidArgument("the status cursor must be a non-negative integer")
    return cursor
