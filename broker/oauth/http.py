"""Bounded HTTP to the authorization server.

Every response is read as a stream and abandoned past ``max_bytes``; the whole exchange
(connect, send, headers, body) is bounded by one total timeout; redirects are never followed
(RFC 6749 section 5.1 responses are direct; a 3xx is an error, cf. RFC 9101 section 10.4.1).
Transport failures and timeouts become :class:`AuthServerUnavailable` (retryable).

Each request is one CLIENT span and one ``http.client.request.duration`` measurement (seconds)
per the OpenTelemetry HTTP semantic conventions: span name the method (``POST``), attributes
``http.request.method``, ``server.address``, ``server.port``, ``url.full`` (without query,
fragment or user info: :func:`url_full_of`), ``http.response.status_code``, and ``error.type``
(the status code for a 4xx/5xx answer, else a short reason) with status ERROR on failure. The
W3C trace context of that span is injected into the outbound request.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from broker import strict_json
from broker.errors import AuthServerUnavailable, UnexpectedResponse
from broker.telemetry import instruments

JSON_ACCEPT = "application/json"


@dataclass(frozen=True)
class HttpResponse:
    """A fully read, size-bounded response. ``max_bytes`` is the cap the body was read under;
    :func:`parse_json_object` applies the same cap to the JSON text (one source of truth)."""

    status_code: int
    headers: httpx.Headers = field(compare=False)
    body: bytes = field(repr=False)
    host: str
    max_bytes: int = field(default=strict_json.DOCUMENT_MAX_BYTES, compare=False)

    @property
    def content_type(self) -> str:
        ctype: str = self.headers.get("content-type", "")
        return ctype.split(";", 1)[0].strip().lower()


def host_of(url: str) -> str:
    """The host of ``url`` (for span attributes), ``""`` when it does not parse."""
    try:
        return _host_of(url)
    except TypeError:  # unhashable: not a URL string
        return ""


@functools.lru_cache(maxsize=64)
def _host_of(url: str) -> str:
    # A pure memo: the AS endpoints are a handful of fixed URLs, and parsing one with httpx
    # costs ~15 us, twice per token request.
    try:
        return str(httpx.URL(url).host)
    except (httpx.InvalidURL, TypeError):
        return ""


@dataclass(frozen=True)
class HttpTelemetry:
    """The tracer and the ``http.client.request.duration`` histogram requests report to."""

    tracer: trace.Tracer
    duration: metrics.Histogram

    @classmethod
    def of(
        cls,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> HttpTelemetry:
        """From the given providers; the global ones (resolved when used) where ``None``."""
        return cls(
            trace.get_tracer("broker.oauth.http", tracer_provider=tracer_provider),
            instruments.create(
                metrics.get_meter("broker.oauth.http", meter_provider=meter_provider),
                instruments.HTTP_CLIENT_DURATION,
            ),
        )


_GLOBAL_TELEMETRY = HttpTelemetry.of()


@functools.lru_cache(maxsize=64)
def _url_attributes(url: str) -> tuple[tuple[str, str | int], ...]:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return ()
    port = parsed.port or {"https": 443, "http": 80}.get(parsed.scheme)
    out: list[tuple[str, str | int]] = [("server.address", str(parsed.host))]
    if port is not None:
        out.append(("server.port", port))
    return tuple(out)


def url_full_of(url: str) -> str:
    """``url`` for the ``url.full`` attribute: scheme, host, port and path only (a query string,
    fragment or user info could carry a secret; the AS endpoints need none of them)."""
    try:
        return _url_full_of(url)
    except TypeError:  # unhashable: not a URL string
        return ""


@functools.lru_cache(maxsize=64)
def _url_full_of(url: str) -> str:
    # A pure memo, as _host_of: parsing and rebuilding the URL costs ~30 us per request.
    try:
        parsed = httpx.URL(url)
        return str(parsed.copy_with(query=None, fragment=None, username=None, password=None))
    except (httpx.InvalidURL, TypeError):
        return ""


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, UnexpectedResponse):
        return "response_too_large"
    return type(exc).__name__


async def request(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    data: Mapping[str, str] | None = None,
    accept: str = JSON_ACCEPT,
    telemetry: HttpTelemetry | None = None,
) -> HttpResponse:
    """Send one request and read at most ``max_bytes`` of the body within ``timeout`` seconds.

    Raises :class:`AuthServerUnavailable` on transport failure or timeout and
    :class:`UnexpectedResponse` when the body is too large. ``telemetry``: where the span and
    the duration go (default: the global providers).
    """
    tel = telemetry if telemetry is not None else _GLOBAL_TELEMETRY
    attributes: dict[str, str | int] = {"http.request.method": method, **dict(_url_attributes(url))}
    started = time.perf_counter()
    with tel.tracer.start_as_current_span(
        method,
        kind=SpanKind.CLIENT,
        attributes={**attributes, "url.full": url_full_of(url)},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            resp = await _exchange(
                http, method, url, timeout=timeout, max_bytes=max_bytes, data=data, accept=accept
            )
        except Exception as exc:
            error = _error_type(exc.__cause__ or exc)
            status_code = getattr(exc, "status_code", None)
            if isinstance(status_code, int):
                attributes["http.response.status_code"] = status_code
                span.set_attribute("http.response.status_code", status_code)
            attributes["error.type"] = error
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR))
            tel.duration.record(time.perf_counter() - started, attributes)
            raise
        attributes["http.response.status_code"] = resp.status_code
        span.set_attribute("http.response.status_code", resp.status_code)
        if resp.status_code >= 400:
            attributes["error.type"] = str(resp.status_code)
            span.set_attribute("error.type", str(resp.status_code))
            span.set_status(Status(StatusCode.ERROR))
        tel.duration.record(time.perf_counter() - started, attributes)
        return resp


async def _exchange(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    data: Mapping[str, str] | None,
    accept: str,
) -> HttpResponse:
    headers: dict[str, str] = {"Accept": accept}
    propagate.inject(headers)
    host = host_of(url)
    try:
        async with asyncio.timeout(timeout):
            req = http.build_request(
                method,
                url,
                data=dict(data) if data is not None else None,
                headers=headers,
                timeout=httpx.Timeout(timeout),
            )
            resp = await http.send(req, stream=True, follow_redirects=False)
            try:
                declared = resp.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise UnexpectedResponse(
                        f"response from {host} declares {declared} bytes, over the "
                        f"{max_bytes}-byte limit",
                        status_code=resp.status_code,
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise UnexpectedResponse(
                            f"response from {host} exceeds the {max_bytes}-byte limit",
                            status_code=resp.status_code,
                        )
                    chunks.append(chunk)
            finally:
                await resp.aclose()
    except TimeoutError as exc:
        raise AuthServerUnavailable(
            f"{method} to {host} did not complete within {timeout:g} s"
        ) from exc
    except httpx.TimeoutException as exc:
        raise AuthServerUnavailable(f"{method} to {host} timed out") from exc
    except httpx.TransportError as exc:
        raise AuthServerUnavailable(f"{method} to {host} failed: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:  # e.g. decoding errors of a content-encoding
        raise UnexpectedResponse(f"{method} to {host} failed: {type(exc).__name__}") from exc
    return HttpResponse(resp.status_code, resp.headers, b"".join(chunks), host, max_bytes)


def parse_json_object(
    resp: HttpResponse, *, max_depth: int = strict_json.MAX_DEPTH
) -> dict[str, Any]:
    """The body as a strict JSON object (:mod:`broker.strict_json`), else
    :class:`UnexpectedResponse`.

    HTML (captive portals), other media types, non-object JSON and everything the strict loader
    refuses (duplicate member names, excessive nesting, bad UTF-8, NaN/Infinity, a body over
    ``resp.max_bytes``) are refused before any field is read.
    """
    ctype = resp.content_type
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise UnexpectedResponse(
            f"response from {resp.host} is {ctype!r}, not JSON", status_code=resp.status_code
        )
    limits = strict_json.JsonLimits(max_bytes=resp.max_bytes, max_depth=max_depth)
    try:
        return strict_json.loads_object(resp.body, limits)
    except strict_json.InvalidJson as exc:
        raise UnexpectedResponse(
            f"response from {resp.host} is not acceptable JSON ({exc.reason}): {exc}",
            status_code=resp.status_code,
        ) from exc


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 section 10.2.3): delay-seconds or an HTTP-date, as seconds."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    delay = when.timestamp() - now
    if math.isnan(delay):
        return None
    return max(0.0, delay)
