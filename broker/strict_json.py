"""Strict JSON (RFC 8259) for every document and JWT segment the authorization server sends.

One loader for discovery metadata, the JWKS, token/PAR responses and JWT headers and claims.
It refuses, in this order and before acting on anything:

* a text over ``max_bytes`` (checked before any decoding);
* anything but UTF-8 (RFC 8259 section 8.1): invalid sequences, encoded surrogates, a BOM;
* nesting deeper than ``max_depth``. A linear pre-scan measures the depth *before* the parser
  runs: CPython's C scanner recurses once per ``[``/``{``, so a deep text would otherwise end in
  a ``RecursionError`` from an arbitrary stack depth;
* duplicate member names (RFC 8259 section 4; RFC 7515 section 5.2 and RFC 7519 section 4 for
  JOSE; RFC 8725 section 2.x: "last one wins" lets two parsers see two different documents);
* ``NaN``, ``Infinity``, ``-Infinity`` and numbers that overflow to infinity;
* lone surrogates written as ``\\uD800``-style escapes;
* any other syntax error (including integers over the interpreter's digit limit).

Every failure is :class:`InvalidJson` with a stable ``reason``; callers wrap it in the typed
:mod:`broker.errors` class of their context (``raise ... from``). Its message never quotes the
document (which may hold tokens), and the third-party exception that carried the document
(``JSONDecodeError.doc``, ``UnicodeDecodeError.object``) is not chained.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

MAX_DEPTH = 32
"""Containers nested inside each other; far above any metadata, JWKS, token response or JWT."""

JWT_MAX_BYTES = 64 * 1024
"""Default cap of one compact JWT (an id_token) in bytes."""

DOCUMENT_MAX_BYTES = 1024 * 1024
"""Default cap of one JSON document from the AS (metadata, JWKS, token response) in bytes."""

# A JSON string token. An unterminated string (or one ending in a lone backslash) runs to the
# end of the text, as the parser sees it: it never recurses past it. Every opening quote thus
# matches at the first try and the possessive quantifiers never backtrack: linear time.
_STRING = re.compile(rb'"[^"\\]*+(?:\\(?:.|\Z)[^"\\]*+)*+(?:"|\Z)', re.DOTALL)
# Openers -> +1, closers -> -1 (0xff as a signed byte); every other byte is deleted.
_BRACKETS = b"[]{}"
_TO_STEPS = bytes.maketrans(_BRACKETS, b"\x01\xff\x01\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
# A \u escape of a surrogate (D800-DFFF); only then can the parser produce a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidJson(ValueError):
    """The text is not strict JSON within the limits. ``reason`` is one of ``too_large``,
    ``invalid_utf8``, ``too_deep``, ``duplicate_member``, ``non_finite_number``,
    ``lone_surrogate``, ``syntax``, ``not_object``."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class JsonLimits:
    """The bounds of one parse: the size of the text in bytes and the container depth."""

    max_bytes: int = DOCUMENT_MAX_BYTES
    max_depth: int = MAX_DEPTH

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_depth < 1:
            raise ValueError("JSON limits must be positive")


DOCUMENT_LIMITS = JsonLimits()
JWT_LIMITS = JsonLimits(max_bytes=JWT_MAX_BYTES)


def nesting_depth(data: bytes) -> int:
    """The deepest container nesting the parser would reach in ``data`` (0 for a scalar).

    Brackets inside strings do not count. Linear in ``len(data)``, no recursion.
    """
    steps = _STRING.sub(b"", data).translate(_TO_STEPS, _NOT_BRACKETS)
    if steps.count(1) == 0:
        return 0
    highest = max(accumulate(memoryview(steps).cast("b")))
    return max(highest, 0)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        name = ""
        for name, _ in pairs:
            if name in seen:
                break
            seen.add(name)
        raise InvalidJson(f"duplicate member name {name[:40]!r}", reason="duplicate_member")
    return obj


def _constant(_name: str) -> Any:
    raise InvalidJson("NaN and Infinity are not JSON", reason="non_finite_number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson("a number overflows to infinity", reason="non_finite_number")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads(data: bytes, limits: JsonLimits = DOCUMENT_LIMITS) -> Any:
    """Parse ``data`` as strict JSON within ``limits``; :class:`InvalidJson` otherwise."""
    if not isinstance(data, bytes | bytearray):
        raise InvalidJson("JSON input must be bytes", reason="syntax")
    if len(data) > limits.max_bytes:
        raise InvalidJson(
            f"JSON text of {len(data)} bytes exceeds the {limits.max_bytes}-byte limit",
            reason="too_large",
        )
    data = bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"JSON text is not UTF-8 (byte {exc.start})"
        raise InvalidJson(message, reason="invalid_utf8") from None
    depth = nesting_depth(data)
    if depth > limits.max_depth:
        raise InvalidJson(
            f"JSON nesting depth exceeds {limits.max_depth}",
            reason="too_deep",
        )
    try:
        value = json.loads(
            text, object_pairs_hook=_object, parse_constant=_constant, parse_float=_float
        )
    except InvalidJson:
        raise
    except json.JSONDecodeError as exc:
        message = f"not JSON: {exc.msg} at char {exc.pos}"
        raise InvalidJson(message, reason="syntax") from None
    except ValueError:  # e.g. an integer over sys.get_int_max_str_digits()
        raise InvalidJson("not JSON: a number is out of range", reason="syntax") from None
    if _SURROGATE_ESCAPE.search(data) and _has_lone_surrogate(value):
        raise InvalidJson("JSON text escapes a lone surrogate", reason="lone_surrogate")
    return value


def loads_object(data: bytes, limits: JsonLimits = DOCUMENT_LIMITS) -> dict[str, Any]:
    """:func:`loads`, and the value must be a JSON object."""
    value = loads(data, limits)
    if not isinstance(value, dict):
        raise InvalidJson("JSON text is not an object", reason="not_object")
    return value
