"""Tracer and meter providers built from ``[telemetry]``; only ``install_global`` touches globals.

Library code takes a tracer from the *global* API (``trace.get_tracer("broker.<area>")``) and
never sets providers. ``main`` calls :func:`build_providers`, then :func:`install_global`, and
:meth:`Telemetry.shutdown` on exit (flushes pending spans and metrics).

Every span passes through :class:`~broker.telemetry.redaction.RedactingSpanProcessor` before it
is exported, whatever the exporter. With ``traces = "off"`` spans still get ids (for log
correlation) but are not exported.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import TextIO

from opentelemetry import metrics, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from broker.errors import ConfigError
from broker.telemetry.metrics import BrokerMetrics
from broker.telemetry.redaction import RedactingSpanProcessor
from broker.telemetry.settings import Exporter, TelemetrySettings

METER_NAME = "broker"
METRIC_EXPORT_INTERVAL_MS = 30_000


def _version() -> str:
    try:
        return metadata.version("dome-token-broker")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def _http_url(endpoint: str | None, signal: str) -> str | None:
    """OTLP/HTTP: ``endpoint`` is the collector base URL; the exporter wants the signal path."""
    if endpoint is None:
        return None
    return endpoint.rstrip("/") + f"/v1/{signal}"


def _span_exporter(kind: Exporter, endpoint: str | None, out: TextIO) -> SpanExporter | None:
    if kind == "otlp-grpc":
        # Imported when chosen: it imports grpc, which `broker serve` must quiet first.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        return OTLPSpanExporter(endpoint=endpoint)
    if kind == "otlp-http":
        return HttpSpanExporter(endpoint=_http_url(endpoint, "traces"))
    if kind == "console":
        return ConsoleSpanExporter(out=out)
    if kind == "off":
        return None
    raise ConfigError(f"[telemetry].traces: unknown exporter {kind!r}")


def _metric_exporter(kind: Exporter, endpoint: str | None, out: TextIO) -> MetricExporter | None:
    if kind == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter  # noqa: PLC0415

        return OTLPMetricExporter(endpoint=endpoint)
    if kind == "otlp-http":
        return HttpMetricExporter(endpoint=_http_url(endpoint, "metrics"))
    if kind == "console":
        return ConsoleMetricExporter(out=out)
    if kind == "off":
        return None
    raise ConfigError(f"[telemetry].metrics: unknown exporter {kind!r}")


@dataclass
class Telemetry:
    """The providers of one process, and the broker's metric instruments on them."""

    settings: TelemetrySettings
    resource: Resource
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    metrics: BrokerMetrics
    _closed: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer from these providers (tests and wiring; library code uses the global API)."""
        return self.tracer_provider.get_tracer(name, _version())

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        traces_ok = self.tracer_provider.force_flush(timeout_millis)
        metrics_ok = self.meter_provider.force_flush(timeout_millis)
        return bool(traces_ok and metrics_ok)

    def shutdown(self) -> None:
        """Flush and stop exporters. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def build_providers(
    settings: TelemetrySettings, *, version: str | None = None, console_out: TextIO | None = None
) -> Telemetry:
    """Build (but do not install) the providers ``settings`` ask for.

    ``console_out`` is where the console exporters write (default: stderr, stdout stays clean).
    """
    out = console_out if console_out is not None else sys.stderr
    resource = Resource.create(
        {SERVICE_NAME: settings.service_name, SERVICE_VERSION: version or _version()}
    )
    tracer_provider = TracerProvider(resource=resource)
    span_exporter = _span_exporter(settings.traces, settings.endpoint, out)
    if span_exporter is not None:
        tracer_provider.add_span_processor(
            RedactingSpanProcessor(BatchSpanProcessor(span_exporter))
        )
    readers: list[MetricReader] = []
    metric_exporter = _metric_exporter(settings.metrics, settings.endpoint, out)
    if metric_exporter is not None:
        readers.append(
            PeriodicExportingMetricReader(
                metric_exporter, export_interval_millis=METRIC_EXPORT_INTERVAL_MS
            )
        )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    broker_metrics = BrokerMetrics(meter_provider.get_meter(METER_NAME, version or _version()))
    return Telemetry(
        settings=settings,
        resource=resource,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        metrics=broker_metrics,
    )


def install_global(telemetry: Telemetry) -> None:
    """Make ``telemetry`` the process-wide providers; W3C tracecontext + baggage propagation.

    Call once, from ``main``. (OpenTelemetry ignores a second provider with a warning.)
    """
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    )
