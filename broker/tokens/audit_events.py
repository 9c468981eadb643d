"""Moved: the runtime audit trail lives in :mod:`broker.audit` (``events``, ``sinks``,
``trail``). This thin re-export keeps ``broker.tokens.broker`` importing it while that file is
being edited elsewhere; import from :mod:`broker.audit` in new code. To be removed."""

from broker.audit.events import (
    AuditAction,
    AuditEvent,
    Outcome,
    event_from_record,
    identifier,
    reason_code,
    record_fields,
)
from broker.audit.sinks import (
    AuditSink,
    FanoutAuditSink,
    FileAuditSink,
    LogAuditSink,
    MeterFailureObserver,
    NullAuditSink,
)
from broker.audit.trail import AuditTrail

__all__ = [
    "AuditAction",
    "AuditEvent",
    "AuditSink",
    "AuditTrail",
    "FanoutAuditSink",
    "FileAuditSink",
    "LogAuditSink",
    "MeterFailureObserver",
    "NullAuditSink",
    "Outcome",
    "event_from_record",
    "identifier",
    "reason_code",
    "record_fields",
]
