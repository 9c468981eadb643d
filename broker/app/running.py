"""The started service and its stop order (SIGTERM/SIGINT, J05): NOT_SERVING -> gRPC drain ->
token core stop (in-flight refreshes finish persisting) -> HTTPS listener -> the store gauges'
sources (detached: a later export reports them not) -> store -> HTTP client -> key store
(telemetry is flushed by the caller)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.app.hsm import HsmServingReporter
from broker.server.app import RunningServer
from broker.tokens.broker import TokenBroker
from broker.web.server import WebServer

# The composition root's log lines keep the name they had in broker/service.py.
log = logging.getLogger("broker.service")

DRAIN_GRACE_SECONDS = 10.0


@dataclass
class Running:
    """The started service (what ``stop()`` shuts down, in order) and the did it serves as."""

    did: str
    grpc: RunningServer
    web: WebServer
    broker: TokenBroker
    hsm_reporter: HsmServingReporter | None = None
    _closers: list[tuple[str, Callable[[], object]]] = field(default_factory=list, repr=False)

    @property
    def grpc_port(self) -> int:
        return self.grpc.port

    async def stop(self) -> None:
        if self.hsm_reporter is not None:
            await self.hsm_reporter.stop()
        await self.grpc.set_serving(False)
        await self.grpc.stop(DRAIN_GRACE_SECONDS)
        await self.grpc.policy.stop()
        await self.broker.stop()
        await self.web.stop()
        for name, closer in reversed(self._closers):
            try:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("closing %s failed", name)
