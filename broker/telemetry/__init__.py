"""Telemetry: providers from settings, the metric instruments, structured redacted logs.

``main`` wires it::

    telemetry = build_providers(settings.telemetry)
    install_global(telemetry)
    configure_logging(settings.telemetry)
    ...  # components take telemetry.metrics (BrokerMetrics) in their constructors
    telemetry.shutdown()

Library code only uses ``opentelemetry.trace.get_tracer("broker.<area>")``.
"""

from __future__ import annotations

from broker.telemetry.logging import (
    JsonFormatter,
    TextFormatter,
    TraceContextFilter,
    configure_logging,
)
from broker.telemetry.metrics import BrokerMetrics
from broker.telemetry.providers import Telemetry, build_providers, install_global
from broker.telemetry.redaction import (
    REDACTED,
    RedactingFilter,
    RedactingSpanProcessor,
    is_sensitive_key,
    redact_text,
    redact_value,
)

__all__ = [
    "REDACTED",
    "BrokerMetrics",
    "JsonFormatter",
    "RedactingFilter",
    "RedactingSpanProcessor",
    "Telemetry",
    "TextFormatter",
    "TraceContextFilter",
    "build_providers",
    "configure_logging",
    "install_global",
    "is_sensitive_key",
    "redact_text",
    "redact_value",
]
