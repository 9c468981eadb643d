"""Checks of caller-supplied values before any domain call (TEST-CATALOGUE F rows).

Every failure is an :class:`InvalidArgument` whose message names the field and the rule, never
the offending value (it may be a secret, such as an authorization code).
"""

from __future__ import annotations

import re

from broker.errors import InvalidArgument

ID_MAX = 128
LABEL_MAX = 64
CODE_MAX = 2048
STATE_MAX = 512
ISS_MAX = 2048
ERROR_MAX = 256
MIN_TTL_MAX_SECONDS = 3600
_NANOS_PER_SECOND = 1_000_000_000

_ID_RE = re.compile(r"[A-Za-z0-9_-]+")
_LABEL_RE = re.compile(r"[A-Za-z0-9._-]+")
# Visible ASCII, no space: codes, states and issuer URLs as they arrive in a redirect.
_VSCHAR_RE = re.compile(r"[\x21-\x7e]+")
# RFC 6749 appendix A.7: error = 1*NQSCHAR (%x20-21 / %x23-5B / %x5D-7E)
_ERROR_RE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")


def _bounded(value: str, field: str, maximum: int, pattern: re.Pattern[str], rule: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > maximum:
        raise InvalidArgument(f"{field} is longer than {maximum} characters")
    if pattern.fullmatch(value) is None:
        raise InvalidArgument(f"{field} must consist of {rule}")
    return value


def grant_id(value: str) -> str:
    """A grant id: 1-128 characters of [A-Za-z0-9_-]."""
    return _bounded(value, "grant_id", ID_MAX, _ID_RE, "[A-Za-z0-9_-]")


def login_id(value: str) -> str:
    """A login id: 1-128 characters of [A-Za-z0-9_-]."""
    return _bounded(value, "login_id", ID_MAX, _ID_RE, "[A-Za-z0-9_-]")


def label(value: str) -> str:
    """A grant label: 1-64 characters of [A-Za-z0-9._-]."""
    return _bounded(value, "label", LABEL_MAX, _LABEL_RE, "[A-Za-z0-9._-]")


def label_filter(value: str) -> str | None:
    """An optional label filter: empty means no filter."""
    return None if value == "" else label(value)


def min_ttl(seconds: int, nanos: int) -> float:
    """A ``google.protobuf.Duration`` minimum lifetime in [0, 1 h], as float seconds."""
    if not -_NANOS_PER_SECOND < nanos < _NANOS_PER_SECOND:
        raise InvalidArgument("min_ttl.nanos must be within +-999999999")
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        raise InvalidArgument("min_ttl.seconds and min_ttl.nanos must have the same sign")
    total = seconds + nanos / _NANOS_PER_SECOND
    if total < 0:
        raise InvalidArgument("min_ttl must not be negative")
    if total > MIN_TTL_MAX_SECONDS:
        raise InvalidArgument(f"min_ttl must be at most {MIN_TTL_MAX_SECONDS} seconds")
    return total


def authorization_response(
    *, code: str, state: str, iss: str, error: str
) -> tuple[str, str, str, str | None]:
    """The parameters of an authorization response (RFC 6749 4.1.2 / 4.1.2.1, RFC 9207).

    ``state`` is always required; ``code`` unless ``error`` is set; ``iss`` may be empty (the
    login service decides whether it was required). Returns (code, state, iss, error or None).
    """
    _bounded(state, "state", STATE_MAX, _VSCHAR_RE, "visible ASCII characters")
    if error:
        _bounded(error, "error", ERROR_MAX, _ERROR_RE, "RFC 6749 error characters")
        if code:
            raise InvalidArgument("code and error are mutually exclusive")
    else:
        _bounded(code, "code", CODE_MAX, _VSCHAR_RE, "visible ASCII characters")
    if iss:
        _bounded(iss, "iss", ISS_MAX, _VSCHAR_RE, "visible ASCII characters")
    return code, state, iss, (error or None)
