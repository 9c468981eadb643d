"""The HSM's health in ``broker serve``: the :class:`HsmHealth` built from ``[key]``, and the
reporter that mirrors it into gRPC health. While the HSM is DOWN (TEST-CATALOGUE D02, D03) the
broker service reports NOT_SERVING and SERVING again once the probe recovers it (F08); warm-cache
tokens are still served.

No gRPC here: the reporter drives any :class:`ServingSwitch` (the running gRPC server is one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from broker.backoff import BackoffPolicy
from broker.clock import Clock
from broker.config import Settings
from broker.keys.health import PROBE_BACKOFF, HsmHealth, HsmState

# The composition root's log lines keep the name they had in broker/service.py.
log = logging.getLogger("broker.service")


class ServingSwitch(Protocol):
    """Where the serving state is published (the gRPC health service of the broker)."""

    async def set_serving(self, serving: bool) -> None: ...


def hsm_health(settings: Settings, clock: Clock) -> HsmHealth:
    """The :class:`HsmHealth` of ``[key]``: busy retries, the per-call bound (which also bounds
    the wait for the HSM lock, D07), and the probe backoff (x1.5 from ``probe_initial`` up to
    ``probe_max``)."""
    k = settings.key
    return HsmHealth(
        clock=clock,
        busy_retries=k.busy_retries,
        op_timeout=k.sign_timeout,
        probe_backoff=BackoffPolicy(
            initial=k.probe_initial, factor=PROBE_BACKOFF.factor, maximum=k.probe_max
        ),
    )


class HsmServingReporter:
    """Mirrors the HSM state into gRPC health (F08): DOWN -> NOT_SERVING, UP -> SERVING.

    HSM listeners run on worker threads; they only wake this task, which reads the current state,
    so the last state always wins.
    """

    def __init__(self, health: HsmHealth, server: ServingSwitch) -> None:
        self._health = health
        self._server = server
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._remove: Callable[[], None] | None = None
        self.applied: list[HsmState] = []  # states written to gRPC health, in order

    def _on_change(self, _state: HsmState) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._changed.set)

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            state = self._health.state
            await self._server.set_serving(state is HsmState.UP)
            self.applied.append(state)
            log.info("gRPC health follows the HSM: %s", state.value)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._remove = self._health.add_listener(self._on_change)
        self._task = self._loop.create_task(self._run(), name="hsm-serving")
        if self._health.state is not HsmState.UP:
            self._changed.set()

    async def stop(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
