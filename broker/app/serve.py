"""Run the service: as a context (tests, the in-process harnesses) or until SIGTERM / SIGINT
(``broker serve``), then drain and stop in order (:meth:`Running.stop`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from broker.app.running import Running
from broker.app.wiring import start
from broker.config import Settings
from broker.telemetry.metrics import BrokerMetrics

# The composition root's log lines keep the name they had in broker/service.py.
log = logging.getLogger("broker.service")


@contextlib.asynccontextmanager
async def running(settings: Settings, **kwargs: object) -> AsyncIterator[Running]:
    service = await start(settings, **kwargs)  # type: ignore[arg-type]
    try:
        yield service
    finally:
        await service.stop()


async def serve_until_signalled(settings: Settings, *, metrics: BrokerMetrics | None) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop in order."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = await start(settings, metrics=metrics)
    print(
        f"broker serving: grpc port {service.grpc_port}, https port {service.web.port}", flush=True
    )
    try:
        await stop.wait()
        log.info("signal received: draining")
    finally:
        await service.stop()
