"""``[telemetry]`` settings: which exporters, where, and the log format.

Defined here, not in :mod:`broker.config`, so that telemetry depends on nothing above it:
the configuration loader imports these (and validates the ``[telemetry]`` section), the
providers and log set-up of this package read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Exporter = Literal["otlp-grpc", "otlp-http", "console", "off"]
LogFormat = Literal["json", "text"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

EXPORTERS: tuple[Exporter, ...] = ("otlp-grpc", "otlp-http", "console", "off")
LOG_LEVELS: tuple[LogLevel, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class TelemetrySettings:
    """``[telemetry]``: exporters for traces and metrics, and the log format."""

    traces: Exporter = "off"
    metrics: Exporter = "off"
    endpoint: str | None = None  # OTLP endpoint; the exporter's default when None
    service_name: str = "broker"
    log_format: LogFormat = "json"
    log_level: LogLevel = "INFO"
