"""The service's health signals besides gRPC health: the DEGRADED / OK log lines of the grant
store's unpersisted results (G04), the resilience gauges and the gauges the store counts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from opentelemetry import metrics as otel_metrics

from broker.keys.health import HsmHealth, HsmState
from broker.oauth.skew import SkewMonitor
from broker.telemetry import instruments
from broker.telemetry.loop_source import LoopSource
from broker.telemetry.metrics import BrokerMetrics
from broker.tokens.broker import TokenBroker
from broker.tokens.model import GrantStatus
from broker.tokens.stores.base import GrantIndex

# The composition root's log lines and meter keep the name they had in broker/service.py.
log = logging.getLogger("broker.service")
METER_NAME = "broker.service"


class PersistenceHealthLog:
    """G04: turns the token core's unpersisted-result signal into DEGRADED / OK log lines.
    gRPC health is left alone: warm tokens keep being served."""

    def __init__(self) -> None:
        self.degraded = False

    def unpersisted_changed(self, grant_ids: frozenset[str]) -> None:
        if grant_ids and not self.degraded:
            log.error(
                "health DEGRADED: the grant store failed to write a new refresh token "
                "(kept in memory, retried before the next refresh)",
                extra={"unpersisted_grants": sorted(grant_ids)},
            )
        elif not grant_ids and self.degraded:
            log.warning("health OK: every refresh result is in the grant store again")
        self.degraded = bool(grant_ids)


def resilience_gauges(
    meter_provider: otel_metrics.MeterProvider | None,
    skew: SkewMonitor,
    broker: TokenBroker,
    *,
    hsm: HsmHealth | None = None,
) -> None:
    """``broker.as.clock_skew`` (C09), ``broker.tokens.unpersisted_grants`` (G04, > 0:
    DEGRADED), the outage budget (``broker.grants.outage_budget``,
    ``broker.grants.last_retry_window``) and, given the probe, ``broker.hsm.up`` (1 up, 0 down)."""
    meter = otel_metrics.get_meter(METER_NAME, meter_provider=meter_provider)
    instruments.create(
        meter, instruments.AS_CLOCK_SKEW, callbacks=[instruments.single_value(lambda: skew.offset)]
    )
    instruments.create(
        meter,
        instruments.UNPERSISTED_GRANTS,
        callbacks=[instruments.single_value(lambda: len(broker.unpersisted_grants))],
    )
    instruments.create(
        meter, instruments.OUTAGE_BUDGET, callbacks=[instruments.single_value(broker.outage_budget)]
    )
    instruments.create(
        meter,
        instruments.LAST_RETRY_WINDOW,
        callbacks=[instruments.single_value(broker.grants_in_last_retry_window)],
    )
    if hsm is not None:
        probe = hsm
        instruments.create(
            meter,
            instruments.HSM_UP,
            callbacks=[instruments.single_value(lambda: int(probe.state is HsmState.UP))],
        )


class StoreGauges:
    """The store-counted gauges' sources, detached at stop before the store closes."""

    def __init__(self, sources: Sequence[LoopSource] = ()) -> None:
        self._sources = tuple(sources)

    async def detach(self) -> None:
        """Every later collection reports neither gauge, silently; returns once no query of
        theirs is running (the store can close)."""
        for source in self._sources:
            await source.detach()


def store_gauges(
    metrics: BrokerMetrics | None,
    store: GrantIndex,
    pending_logins: Callable[[], Awaitable[int]],
) -> StoreGauges:
    """``broker.grants.reauthorization_required`` and ``broker.logins.pending``, counted in the
    store every replica shares (one indexed COUNT each per collection, run on this event loop
    from the exporter's thread: :class:`~broker.telemetry.loop_source.LoopSource`).
    ``pending_logins``: the login service's count of pending, unexpired logins. Detach the
    returned sources before the store closes (:meth:`StoreGauges.detach`)."""
    if metrics is None:
        return StoreGauges()
    loop = asyncio.get_running_loop()

    async def reauthorization_required() -> int:
        return await store.count_by_status(GrantStatus.REAUTHORIZATION_REQUIRED)

    reauth = LoopSource(instruments.REAUTH_REQUIRED.name, loop, reauthorization_required)
    pending = LoopSource(instruments.PENDING_LOGINS.name, loop, pending_logins)
    metrics.observe_reauthorization_required(reauth)
    metrics.observe_pending_logins(pending)
    return StoreGauges((reauth, pending))
