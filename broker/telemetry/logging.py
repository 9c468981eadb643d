"""Structured logs: one JSON object a line (or text), correlated with traces, always redacted.

``configure_logging(settings)`` (called from ``main``) installs one stderr handler on the root
logger with :class:`TraceContextFilter` then :class:`~broker.telemetry.redaction.RedactingFilter`,
and adds the redacting filter to every other handler already on the root logger. The Python
``grpc`` logger is routed to that handler (propagation on, no handler of its own that writes);
gRPC C-core's own stderr lines are silenced by ``broker serve`` before grpc is imported
(:func:`broker.cli.serve.quiet_grpc_core`).

A JSON line holds ``timestamp`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
``message``, ``trace_id`` / ``span_id`` (hex, when a span is current), ``exception`` /
``stack`` (text), and the record's ``extra=`` fields.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

from broker.telemetry.redaction import RedactingFilter, record_extras, redact_text
from broker.telemetry.settings import TelemetrySettings

_RESERVED = frozenset(
    {"timestamp", "level", "logger", "message", "trace_id", "span_id", "exception", "stack"}
)
_HANDLER_MARK = "_broker_handler"


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` / ``span_id`` of the span current where the record is created."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                record.trace_id = format(ctx.trace_id, "032x")
                record.span_id = format(ctx.span_id, "016x")
            else:
                record.trace_id = None
                record.span_id = None
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def _json_default(value: object) -> str:
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    """One compact JSON object per record. Extras colliding with a reserved name get ``extra_``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            doc["trace_id"] = trace_id
            doc["span_id"] = getattr(record, "span_id", None)
        for key, value in record_extras(record).items():
            doc[f"extra_{key}" if key in _RESERVED else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, default=_json_default, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger> [trace=<id> span=<id>] <message> key=value...``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name]
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            parts.append(f"[trace={trace_id} span={getattr(record, 'span_id', '')}]")
        parts.append(record.getMessage())
        parts.extend(f"{k}={v}" for k, v in record_extras(record).items())
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def build_handler(settings: TelemetrySettings, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler with the configured format, trace correlation and redaction."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(TraceContextFilter())
    handler.addFilter(RedactingFilter())
    setattr(handler, _HANDLER_MARK, True)
    return handler


def configure_logging(
    settings: TelemetrySettings, *, stream: TextIO | None = None
) -> logging.Handler:
    """Install the broker's handler on the root logger (replacing one installed earlier).

    Every other root handler gets a :class:`RedactingFilter` too. Returns the new handler.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
        elif not any(isinstance(f, RedactingFilter) for f in old.filters):
            old.addFilter(RedactingFilter())
    handler = build_handler(settings, stream)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    _route_to_root("grpc")
    return handler


def _route_to_root(name: str) -> None:
    """Records of logger ``name`` reach the root handler only: handlers that write are dropped
    (a library's ``NullHandler`` is kept), propagation is on."""
    logger = logging.getLogger(name)
    for own in list(logger.handlers):
        if not isinstance(own, logging.NullHandler):
            logger.removeHandler(own)
    logger.propagate = True
