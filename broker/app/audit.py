"""The runtime audit trail of ``broker serve`` from ``[audit]`` (see :mod:`broker.audit.trail`)."""

from __future__ import annotations

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace

from broker.audit.sinks import (
    AuditSink,
    FanoutAuditSink,
    FileAuditSink,
    LogAuditSink,
    MeterFailureObserver,
)
from broker.audit.trail import AuditTrail
from broker.clock import Clock
from broker.config import Settings


def audit_trail(
    settings: Settings,
    clock: Clock,
    *,
    meter_provider: otel_metrics.MeterProvider | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> tuple[AuditTrail, list[FileAuditSink]]:
    """The runtime audit trail from ``[audit]``: the log file (plus its mirror, fanned out with
    ``require``), else the ``broker.audit`` logger. Returns the file sinks too, to close on
    stop."""
    a = settings.audit
    observer = MeterFailureObserver(meter_provider)
    files = [
        FileAuditSink(p, clock=clock, timeout=a.write_timeout, tracer_provider=tracer_provider)
        for p in (a.path, a.mirror_path)
        if p is not None
    ]
    sink: AuditSink
    if not files:
        sink = LogAuditSink()
    elif len(files) == 1:
        sink = files[0]
    else:
        sink = FanoutAuditSink(files, require=a.require, timeout=a.write_timeout, observer=observer)
    # The trail's own bound sits just above the sinks': their timeout error names the sink.
    return AuditTrail(sink, timeout=a.write_timeout * 1.5, observer=observer), files
