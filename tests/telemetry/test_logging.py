"""Structured logs (H02): secrets never reach a log line; trace ids do."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from broker.telemetry.logging import JsonFormatter, configure_logging
from broker.telemetry.redaction import REDACTED, RedactingFilter
from broker.telemetry.settings import TelemetrySettings

PIN = "87654321"
JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImRpZDprZXk6ekRuIn0.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
)
RT = "Xk3nq0aZ9PqL2mvB7tYw4sR8uE1oN6cH5jG0fD2kA9s"
SECRETS = (PIN, JWT, RT, "eyJhbGciOiJFUzI1NiIsImtpZCI6")


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    filters = {h: list(h.filters) for h in handlers}
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h, fs in filters.items():
        h.filters[:] = fs
    root.setLevel(level)


def configured(log_format: str = "json") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(
        TelemetrySettings(log_format=log_format, log_level="DEBUG"),  # type: ignore[arg-type]
        stream=stream,
    )
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.usefixtures("restore_root")
def test_h02_pin_jwt_refresh_token_in_message_args_extra_and_exception_never_appear() -> None:
    stream = configured()
    log = logging.getLogger("broker.test.h02")
    log.info(f"login with pin={PIN} and token {JWT}")  # a careless f-string
    log.info("user pin %s, refresh_token=%s", PIN, RT)
    log.warning(
        "token response",
        extra={"refresh_token": RT, "detail": {"id_token": JWT}, "grant_id": "g-7"},
    )
    log.info("pkcs11", extra={"pin": PIN, "note": f"Bearer {RT}"})
    try:
        raise RuntimeError(f"refresh failed for refresh_token={RT} with assertion {JWT}")
    except RuntimeError:
        log.exception("refresh failed")
    log.info("stack", stack_info=True, extra={"args_dump": [JWT, {"password": "pw-1"}]})

    text = stream.getvalue()
    assert_clean(text)
    assert "pw-1" not in text
    records = lines(stream)
    assert len(records) == 6
    assert records[2]["refresh_token"] == REDACTED
    assert records[2]["detail"] == {"id_token": REDACTED}
    assert records[2]["grant_id"] == "g-7"  # identifiers stay
    assert records[3]["pin"] == REDACTED
    assert "Traceback" in records[4]["exception"] and "RuntimeError" in records[4]["exception"]
    assert records[4]["level"] == "ERROR" and records[4]["message"] == "refresh failed"
    assert "stack" in records[5]


@pytest.mark.usefixtures("restore_root")
def test_h02_text_format_is_redacted_too() -> None:
    stream = configured("text")
    log = logging.getLogger("broker.test.text")
    log.info("got %s", JWT, extra={"refresh_token": RT})
    try:
        raise ValueError(f"pin: {PIN}")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert_clean(text)
    assert "INFO broker.test.text got [REDACTED] refresh_token=[REDACTED]" in text
    assert "Traceback" in text


@pytest.mark.usefixtures("restore_root")
def test_json_line_shape_and_trace_ids_inside_a_span() -> None:
    stream = configured()
    log = logging.getLogger("broker.test.trace")
    provider = TracerProvider()  # not installed globally: use_span sets the current context
    tracer = provider.get_tracer("broker.test")
    log.info("outside")
    with tracer.start_as_current_span("tokens.get") as span:
        log.info("inside %d", 1, extra={"grant_id": "g-1", "freshness": "fresh"})
        ctx = span.get_span_context()
    outside, inside = lines(stream)
    assert "trace_id" not in outside
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert inside["message"] == "inside 1"
    assert inside["logger"] == "broker.test.trace" and inside["level"] == "INFO"
    assert inside["timestamp"].endswith("Z") and "T" in inside["timestamp"]
    assert inside["grant_id"] == "g-1" and inside["freshness"] == "fresh"
    provider.shutdown()


@pytest.mark.usefixtures("restore_root")
def test_extras_with_reserved_names_do_not_overwrite_fields() -> None:
    stream = configured()
    logging.getLogger("broker.test.reserved").info("m", extra={"level": "fake", "timestamp": 1})
    (record,) = lines(stream)
    assert record["level"] == "INFO"
    assert record["extra_level"] == "fake" and record["extra_timestamp"] == 1


@pytest.mark.usefixtures("restore_root")
def test_configure_logging_replaces_its_handler_and_filters_every_other_handler() -> None:
    foreign = io.StringIO()
    other = logging.StreamHandler(foreign)
    other.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(other)
    try:
        configured()
        stream = configured()  # second call: still one broker handler
        logging.getLogger("broker.test.twice").info("rt %s", RT)
        assert len(lines(stream)) == 1
        assert any(isinstance(f, RedactingFilter) for f in other.filters)
        assert RT not in foreign.getvalue() and REDACTED in foreign.getvalue()
    finally:
        root.removeHandler(other)


@pytest.mark.usefixtures("restore_root")
def test_log_level_is_applied() -> None:
    stream = io.StringIO()
    configure_logging(TelemetrySettings(log_level="WARNING"), stream=stream)
    log = logging.getLogger("broker.test.level")
    log.info("hidden")
    log.warning("shown")
    assert [r["message"] for r in lines(stream)] == ["shown"]


def test_bad_format_arguments_do_not_leak_or_crash() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items " + RT, ("nope",), None)
    assert RedactingFilter().filter(record)
    out = JsonFormatter().format(record)
    assert RT not in out and "unformattable" in out


def test_formatter_alone_redacts_unknown_objects_in_extras() -> None:
    class Obj:
        def __str__(self) -> str:
            return f"Obj({JWT})"

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.thing = Obj()
    out = JsonFormatter().format(record)
    assert JWT not in out
