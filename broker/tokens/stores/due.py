"""When a stored grant's next refresh is due, as the stores record it (``refresh_due_at``).

The stores keep the due time in a clear, indexed column so that the background pass can ask
for the grants due now (:meth:`broker.tokens.stores.base.GrantIndex.due`) without opening any
token. A store computes it with a :class:`DueRule` when a grant is created or rotated; the
token core passes its own :class:`broker.tokens.schedule.RefreshSchedule` (which is one), and
may give an explicit time to ``rotate(..., refresh_due_at=...)``. The default rule is the token
core's default schedule (``RefreshPolicy()``: the threshold
:data:`broker.tokens.freshness.REFRESH_THRESHOLD` alone, jitter 0.1). A store whose rule says
*earlier* than the core's only makes the background pass look at a grant too soon (it checks
and leaves it); one that says *later* delays its background refresh (callers still refresh a
stale token themselves), so serve gives the store the configured schedule.
"""

from __future__ import annotations

from typing import Protocol

from broker.tokens.freshness import REFRESH_THRESHOLD
from broker.tokens.schedule import RefreshSchedule


class DueRule(Protocol):
    def due_at(
        self, grant_id: str, version: int, *, issued_at: float | None, expires_at: float
    ) -> float: ...


DEFAULT_DUE_RULE: DueRule = RefreshSchedule(threshold=REFRESH_THRESHOLD, jitter=0.1, fraction=None)


def due_at(
    rule: DueRule, grant_id: str, version: int, *, issued_at: float | None, expires_at: float
) -> float:
    return float(rule.due_at(grant_id, version, issued_at=issued_at, expires_at=expires_at))
