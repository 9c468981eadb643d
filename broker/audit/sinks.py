"""Where runtime audit events go (see :mod:`broker.audit.trail` for the policy): the
hash-chained log file, the ``broker.audit`` logger, several sinks at once, or nowhere."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

from opentelemetry import metrics, trace

from broker.audit.events import AuditEvent, record_fields
from broker.audit.log import AuditLog
from broker.clock import Clock
from broker.errors import AuditError, AuditUnavailable, BrokerError, InvalidArgument

_log = logging.getLogger("broker.audit")

Require = Literal["all", "any"]

DEFAULT_TIMEOUT = 2.0


class AuditSink(Protocol):
    """Takes audit events. ``record`` returns once the event is durable; raises
    :class:`broker.errors.AuditError` (usually :class:`AuditUnavailable`) when it is not."""

    async def record(self, event: AuditEvent) -> None: ...


class AuditFailureObserver(Protocol):
    """Told about every failed audit write (metric/alert hook). Must not block or raise."""

    def audit_failed(self, sink: str, action: str) -> None: ...


class NullFailureObserver:
    def audit_failed(self, sink: str, action: str) -> None:
        return None


class MeterFailureObserver:
    """Counts failures on ``broker.audit.failures`` {sink, action} (both non-secret names)."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter("broker.audit", meter_provider=meter_provider)
        self._failures = meter.create_counter(
            "broker.audit.failures",
            unit="{record}",
            description="Audit records that could not be written (per sink and action)",
        )

    def audit_failed(self, sink: str, action: str) -> None:
        self._failures.add(1, {"sink": sink, "action": action})


class _AbandonableAuditLog(AuditLog):
    """An :class:`AuditLog` whose current append can be called off while it waits for the
    file lock: the flag is checked once the lock is held, right before the record is built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.abandoned: threading.Event | None = None  # set by the single worker thread only

    def _next_link(self, fd: int) -> tuple[int, str]:
        if self.abandoned is not None and self.abandoned.is_set():
            raise AuditError("audit write abandoned after its timeout")
        return super()._next_link(fd)


class FileAuditSink:
    """Appends events to the hash-chained JSON-lines log at ``path`` (see :mod:`broker.audit.log`),
    one worker thread per sink, each write bounded by ``timeout`` seconds."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock,
        timeout: float = DEFAULT_TIMEOUT,
        operator: str | None = None,
        host: str | None = None,
        name: str | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        if timeout <= 0:
            raise InvalidArgument("audit write timeout must be positive")
        self.path = Path(path)
        self.name = name or f"file:{self.path.name}"
        self._timeout = timeout
        self._log = _AbandonableAuditLog(self.path, operator=operator, host=host, clock=clock)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._tracer = trace.get_tracer("broker.audit", tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        return f"FileAuditSink(path={str(self.path)!r}, timeout={self._timeout})"

    def _write(self, event: AuditEvent, abandoned: threading.Event) -> None:
        if abandoned.is_set():
            return
        self._log.abandoned = abandoned
        try:
            target = record_fields(event)["key_uri"]
            self._log.append(
                str(event.action),
                outcome=event.outcome,
                key_uri=target,
                did=event.subject,
                error=event.reason,
            )
        finally:
            self._log.abandoned = None

    async def record(self, event: AuditEvent) -> None:
        with self._tracer.start_as_current_span("audit.record") as span:
            span.set_attribute("audit.action", str(event.action))
            span.set_attribute("audit.sink", self.name)
            abandoned = threading.Event()
            try:
                future = self._executor.submit(self._write, event, abandoned)
            except RuntimeError as exc:  # executor shut down
                raise AuditUnavailable(f"audit sink {self.name} is closed") from exc
            waiter = asyncio.wrap_future(future)
            try:
                done, _ = await asyncio.wait({waiter}, timeout=self._timeout)
            finally:
                if not waiter.done():  # timed out or cancelled: call the write off
                    abandoned.set()
                    future.cancel()
            if not done:
                span.set_attribute("audit.outcome", "timeout")
                raise AuditUnavailable(
                    f"audit sink {self.name} did not finish a write within {self._timeout} s"
                )
            try:
                waiter.result()
            except AuditError as exc:
                span.set_attribute("audit.outcome", exc.reason)
                raise AuditUnavailable(f"audit sink {self.name} failed: {exc.message}") from exc
            span.set_attribute("audit.outcome", "ok")

    def close(self) -> None:
        """Stop the worker thread (a write stuck in the kernel is left behind, not joined)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class LogAuditSink:
    """Writes events as structured records to the ``broker.audit`` logger (no file configured):
    no chain, no durability; used when ``[audit].path`` is not set."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or _log

    async def record(self, event: AuditEvent) -> None:
        fields_ = {k: v for k, v in record_fields(event).items() if v is not None}
        self._logger.info("audit %s %s", event.action, event.outcome, extra={"audit": fields_})


class NullAuditSink:
    """Takes every event and keeps none: for components built without an audit trail (unit
    tests of the token core); the service always wires a real sink."""

    name = "null"

    async def record(self, event: AuditEvent) -> None:
        return None


def sink_name(sink: AuditSink) -> str:
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) else type(sink).__name__


class FanoutAuditSink:
    """Writes each event to every sink concurrently, each bounded by ``timeout`` seconds.

    ``require="all"``: the event counts as written only when every sink took it.
    ``require="any"``: when at least one did (a failing or blocked sink is logged and counted
    but does not stop service: Vault's "one of several audit devices" rule).
    """

    def __init__(
        self,
        sinks: Sequence[AuditSink],
        *,
        require: Require = "all",
        timeout: float = DEFAULT_TIMEOUT,
        observer: AuditFailureObserver | None = None,
    ) -> None:
        if not sinks:
            raise InvalidArgument("a fan-out audit sink needs at least one sink")
        if require not in ("all", "any"):
            raise InvalidArgument("require must be 'all' or 'any'")
        if timeout <= 0:
            raise InvalidArgument("audit write timeout must be positive")
        self._sinks = tuple(sinks)
        self._require = require
        self._timeout = timeout
        self._observer: AuditFailureObserver = observer or NullFailureObserver()
        self.name = f"fanout:{require}"

    async def _one(self, sink: AuditSink, event: AuditEvent) -> BrokerError | None:
        try:
            async with asyncio.timeout(self._timeout):
                await sink.record(event)
        except TimeoutError:
            error: BrokerError = AuditUnavailable("audit sink did not finish in time")
        except BrokerError as exc:
            error = exc
        else:
            return None
        name = sink_name(sink)
        _log.error("audit sink %s failed on %s: %s", name, event.action, error.reason)
        observe_failure(self._observer, name, str(event.action))
        return error

    async def record(self, event: AuditEvent) -> None:
        results = await asyncio.gather(*(self._one(sink, event) for sink in self._sinks))
        failed = [r for r in results if r is not None]
        if not failed:
            return
        if self._require == "any" and len(failed) < len(self._sinks):
            return
        raise AuditUnavailable(
            f"{len(failed)} of {len(self._sinks)} audit sinks failed (require={self._require})"
        ) from failed[0]


def observe_failure(observer: AuditFailureObserver, sink: str, action: str) -> None:
    try:
        observer.audit_failed(sink, action)
    except Exception:
        _log.exception("audit failure observer failed")
