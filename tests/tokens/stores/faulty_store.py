"""A :class:`MemoryGrantStore` that fails on request: the token core's store-failure tests (G04)
inject a full disk or an I/O error into one call without touching the production store.

``FaultyMemoryStore.fail_next(operation, error)`` makes the next call of ``operation`` raise
``error`` before it changes anything (queued: one error per call). Every operation that enters
the memory store through its ``_enter`` check can fail; :data:`OPERATIONS` is read from the
source of the store's classes (the store and its mixins) so it never drifts from it.
"""

from __future__ import annotations

import inspect
import re
from collections import defaultdict, deque
from functools import cached_property

from broker.errors import BrokerError, InvalidArgument
from broker.tokens.stores.memory import MemoryGrantStore

OPERATIONS = frozenset(
    name
    for cls in MemoryGrantStore.__mro__
    if cls.__module__.startswith("broker.")
    for name in re.findall(r'self\._enter\("(\w+)"\)', inspect.getsource(cls))
)
"""The store operations a fault can be injected into (those that call ``_enter``)."""


class FaultyMemoryStore(MemoryGrantStore):
    """The memory store, plus :meth:`fail_next`."""

    @cached_property
    def _faults(self) -> defaultdict[str, deque[BrokerError]]:
        return defaultdict(deque)

    def fail_next(self, operation: str, error: BrokerError) -> None:
        """Make the next call of ``operation`` raise ``error`` (queued; one error per call)."""
        if operation not in OPERATIONS:
            raise InvalidArgument(f"unknown store operation {operation!r}")
        self._faults[operation].append(error)

    def _enter(self, operation: str) -> None:
        super()._enter(operation)  # a closed store says so first
        queue = self._faults.get(operation)
        if queue:
            raise queue.popleft()
