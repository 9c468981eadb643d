"""Defer SIGINT and SIGTERM across a ceremony's critical section.

Between "the key exists in the token" and "its completion record is in the audit log" an
interrupt would leave a key whose record says it was never finished. Inside
:func:`deferred_signals` a SIGINT (Ctrl-C) or SIGTERM is only noted; when the block ends the
previous handlers are restored and the first signal noted is raised again, so the process
still stops, just after the record is written. SIGKILL cannot be deferred: the intent record
written before the key is created covers it (see :mod:`broker.ceremony.orphans`).

Python handlers can only be installed from the main thread; elsewhere the block runs without
deferral (the CLI always runs ceremonies on the main thread).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_signals(signals: tuple[signal.Signals, ...] = DEFERRED) -> Iterator[None]:
    """Note ``signals`` while the block runs; re-raise the first one noted after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if noted:
            signal.raise_signal(noted[0])
