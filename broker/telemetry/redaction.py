"""Scrubbing secrets out of log records and span attributes (defence in depth).

The broker never *means* to log a secret (CONTRIBUTING.md); this layer catches the mistakes:

* JWTs / JWS / JWE (``eyJ...``), ``Bearer ...`` credentials;
* long base64url or hex blobs that look like tokens (32+ characters mixing letters and digits),
  except public identifiers: ``did:key:...`` and its kid (``did:key:z...#z...``, base58btc,
  which may spell ``eyJ`` by chance), fingerprints written as ``sha256:<hex>`` and
  UUIDs in their dashed form (grant ids). A UUID that is the value of a sensitive key is still
  redacted (DOME authorization codes are UUIDs: ``code=<uuid>``);
* values of keys named like secrets (``pin``, ``token``, ``refresh_token``, ``code``,
  ``assertion``, ``client_assertion``, ``request``, ``secret``, ``password``, ...) in mappings,
  and in ``key=value`` / ``key: value`` / ``"key": "value"`` text (query strings, form bodies,
  JSON).

:func:`redact_text` and :func:`redact_value` are pure. :class:`RedactingFilter` applies them to
a :class:`logging.LogRecord` (message, args, extras, exception and stack text).
:class:`RedactingSpanProcessor` applies them to span attributes, event attributes and status
descriptions before an inner processor exports the span.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import Status
from opentelemetry.util.types import Attributes, AttributeValue

REDACTED = "[REDACTED]"

_SENSITIVE_NAMES = frozenset(
    {
        "pin",
        "pin_value",
        "user_pin",
        "so_pin",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "vp_token",
        "code",
        "code_verifier",
        "assertion",
        "client_assertion",
        "request",
        "request_object",
        "secret",
        "client_secret",
        "password",
        "passwd",
        "passphrase",
        "authorization",
        "cookie",
        "set_cookie",
        "private_key",
    }
)
_NORMALISE = str.maketrans({"-": "_", ".": "_", " ": "_", "\t": "_"})
_SENSITIVE_SUFFIXES = ("_token", "_secret", "_password", "_pin", "_assertion", "_private_key")


def is_sensitive_key(name: str) -> bool:
    """True when a mapping key / keyword names a secret (case, ``-`` and ``.`` insensitive)."""
    norm = name.strip().lower().translate(_NORMALISE)
    return norm in _SENSITIVE_NAMES or norm.endswith(_SENSITIVE_SUFFIXES)


# key=value, key: value, "key": "value", 'key'='value'; the key decides (is_sensitive_key). The
# value is a lookahead, so a harmless pair ("failed: PIN: 1234") does not swallow the next key.
_KV = re.compile(
    r"""(?<![\w-])(?P<kq>["']?)(?P<key>[\w-]++)(?P=kq)(?P<sep>\s*[=:]\s*)"""
    r"""(?=(?P<q>["']?)(?P<value>[^\s"'&,;}\]]+))"""
)
# "pin 1234", "password is hunter2": words that are followed by their secret without '='.
_LOOSE = re.compile(r"(?i)\b(pin|password|passphrase)(\s+(?:is\s+)?)(?![\[=:])(\S+)")
# RFC 6750 section 2.1 b64token, whole (a "Bearer grant_type=..." prose fragment is not one).
_BEARER = re.compile(r"(?i)\b(bearer|dpop|basic)\s+[A-Za-z0-9._~+/-]{8,}=*(?![A-Za-z0-9._~+/=-])")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){1,4}|eyJ[A-Za-z0-9_-]{16,}")
# Blobs: 32+ base64url/base64 characters, or hex, with at least one digit and one letter.
_BLOB = re.compile(r"(?<![A-Za-z0-9_+/-])[A-Za-z0-9_+/-]{32,}={0,2}(?![A-Za-z0-9_+/=-])")
_KEEP_BEFORE = re.compile(r"(?:did:key:|sha256:)$")
# A did:key (and its kid, did#fragment) is base58btc after "z"; "eyJ" may occur inside by chance.
_BASE58 = "1-9A-HJ-NP-Za-km-z"
_IN_DID_KEY = re.compile(rf"did:key:z[{_BASE58}]*(?:#z[{_BASE58}]*)?$")
_ALL_BASE58 = re.compile(rf"[{_BASE58}]+")
_DID_KEY_FRAGMENT_BEFORE = re.compile(rf"did:key:z[{_BASE58}]+#$")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _jwt(match: re.Match[str]) -> str:
    text = match.group(0)
    before = match.string[max(0, match.start() - 128) : match.start()]
    if _IN_DID_KEY.search(before) and _ALL_BASE58.fullmatch(text):
        return text  # the middle of a public did:key, not a token
    return REDACTED


def _blob(match: re.Match[str]) -> str:
    text = match.group(0)
    before = match.string[max(0, match.start() - 8) : match.start()]
    if _KEEP_BEFORE.search(before) or _UUID.fullmatch(text):
        return text
    if _DID_KEY_FRAGMENT_BEFORE.search(match.string[max(0, match.start() - 64) : match.start()]):
        return text  # the fragment of a did:key kid (did:key:z...#z...)
    if not (re.search(r"\d", text) and re.search(r"[A-Za-z]", text)):
        return text  # a long word or number: not a token
    if "/" in text and re.search(r"/[A-Za-z]", text) and not re.search(r"[+=]", text):
        return text  # a path segment chain such as a/b/c
    return REDACTED


# RFC 9110 section 9 methods. ``request`` names a secret (the RFC 9101 request object), but
# "HTTP Request: POST https://..." (httpx's request log line) is a method, never a JWT.
_HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def _is_http_method_of_request(match: re.Match[str]) -> bool:
    return match["key"].lower() == "request" and match["value"] in _HTTP_METHODS


def _redact_pairs(text: str) -> str:
    out: list[str] = []
    pos = 0
    for match in _KV.finditer(text):
        if match.start() < pos or not is_sensitive_key(match["key"]):
            continue  # inside a value already redacted, or a harmless key
        if _is_http_method_of_request(match):
            continue
        out.append(text[pos : match.end()])
        out.append(match["q"] + REDACTED)
        pos = match.end() + len(match["q"]) + len(match["value"])
    out.append(text[pos:])
    return "".join(out)


def redact_text(text: str) -> str:
    """Return ``text`` with every secret-looking part replaced by ``[REDACTED]``."""
    if not text:
        return text
    out = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    out = _redact_pairs(out)
    out = _LOOSE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", out)
    out = _JWT.sub(_jwt, out)
    return _BLOB.sub(_blob, out)


def redact_value(value: Any, *, depth: int = 0) -> Any:
    """Redact a log extra: strings by pattern, mappings by key name, containers recursively.

    Objects of other types become their redacted ``str`` (a ``repr`` may hold a secret).
    """
    if depth > 8:
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if is_sensitive_key(str(k)) else redact_value(v, depth=depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, depth=depth + 1) for v in value]
    return redact_text(str(value))


# --- logging -----------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_MARK = "_broker_redacted"


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record (not the standard attributes, not private ones)."""
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD_ATTRS and not k.startswith("_") and k not in ("trace_id", "span_id")
    }


class RedactingFilter(logging.Filter):
    """Scrubs a record in place: message+args (merged), extras, exception and stack text.

    Attach it to every handler (handler filters also see records propagated from child loggers).
    Never drops a record. Idempotent.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _MARK, False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not hide the record nor leak args
            message = f"{record.msg!s} [unformattable arguments]"
        record.msg = redact_text(message)
        record.args = None
        for key, value in record_extras(record).items():
            setattr(record, key, REDACTED if is_sensitive_key(key) else redact_value(value))
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info = None  # other handlers must not format the raw exception again
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        setattr(record, _MARK, True)
        return True


# --- spans -------------------------------------------------------------------------------------


def _redact_attribute(key: str, value: AttributeValue) -> AttributeValue:
    if is_sensitive_key(key.rsplit(".", 1)[-1]):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        items = list(value)
        if items and all(isinstance(v, str) for v in items):
            return [redact_text(str(v)) for v in items]
    return value


def redact_attributes(attributes: Attributes) -> dict[str, AttributeValue]:
    return {k: _redact_attribute(k, v) for k, v in (attributes or {}).items()}


class RedactingSpanProcessor(SpanProcessor):
    """Wraps the exporting processor: spans reach it with secret-looking values redacted.

    Covers span attributes, event attributes (``exception.message``/``stacktrace`` from
    ``record_exception``) and the status description. The span name is left alone (names are
    static by convention).
    """

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        status = span.status
        if status.description:
            status = Status(status.status_code, redact_text(status.description))
        clean = ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=redact_attributes(span.attributes),
            events=[
                Event(e.name, redact_attributes(e.attributes), timestamp=e.timestamp)
                for e in span.events
            ],
            links=span.links,
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )
        self._inner.on_end(clean)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
