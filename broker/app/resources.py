"""What :func:`broker.app.wiring.start` has opened: undone in reverse order when a later step
fails; the closers are handed to :class:`broker.app.running.Running`, whose ``stop`` closes them
in reverse order after the listeners and the token core."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable


class Resources:
    """The unwinding stack of a start and the closers of a started service."""

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self.closers: list[tuple[str, Callable[[], object]]] = []

    def owned(self, name: str, close: Callable[[], object]) -> None:
        """``close()`` runs if the start fails, and at stop."""
        self._stack.callback(close)
        self.closers.append((name, close))

    def owned_async(self, name: str, close: Callable[[], Awaitable[object]]) -> None:
        """``await close()`` runs if the start fails, and at stop."""
        self._stack.push_async_callback(close)
        self.closers.append((name, close))

    def on_failure(self, undo: Callable[[], Awaitable[object]]) -> None:
        """``await undo()`` runs only if the start fails (``Running.stop`` stops it itself)."""
        self._stack.push_async_callback(undo)

    async def unwind(self) -> None:
        """The start failed: undo everything, last first."""
        await self._stack.aclose()

    def keep(self) -> None:
        """The start succeeded: nothing is undone any more."""
        self._stack.pop_all()
