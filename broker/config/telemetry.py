"""``[telemetry]``: parsed here into :class:`broker.telemetry.settings.TelemetrySettings`, which
the telemetry package defines so that it depends on nothing above it."""

from __future__ import annotations

from typing import cast
from urllib.parse import urlsplit

from broker.config.section import Section
from broker.errors import ConfigError
from broker.telemetry.settings import (
    EXPORTERS,
    LOG_LEVELS,
    Exporter,
    LogFormat,
    LogLevel,
    TelemetrySettings,
)


def parse_telemetry(section: Section) -> TelemetrySettings:
    traces: Exporter = section.choice("traces", EXPORTERS, "off")
    metrics: Exporter = section.choice("metrics", EXPORTERS, "off")
    endpoint = section.string("endpoint")
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{section.key('endpoint')} must be an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{section.key('endpoint')} must not carry user information")
    service = section.string("service_name", default="broker")
    assert service is not None
    log_format: LogFormat = section.choice("log_format", ("json", "text"), "json")
    level = section.string("log_level", default="INFO")
    assert level is not None
    if level.upper() not in LOG_LEVELS:
        raise ConfigError(f"{section.key('log_level')} must be one of {', '.join(LOG_LEVELS)}")
    return TelemetrySettings(
        traces=traces,
        metrics=metrics,
        endpoint=endpoint,
        service_name=service,
        log_format=log_format,
        log_level=cast(LogLevel, level.upper()),
    )
