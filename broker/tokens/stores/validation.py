"""Validation of what a grant store is given, shared by every store.

Each check raises :class:`broker.errors.InvalidArgument` naming the field, never its value (a
token is a secret): ids, labels and reasons are bounded text without control characters, times
are finite epoch seconds, tokens are bounded non-empty strings, id_token claims encode as JSON.
:func:`validate_grant` and :func:`validate_tokens` check a whole :class:`broker.tokens.model.Grant`
or :class:`broker.oauth.types.TokenSet` before a store writes it; :func:`check_due_query` and
:func:`check_claim` the arguments of the scheduler's queries.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from broker.errors import InvalidArgument
from broker.oauth.types import TokenSet
from broker.tokens.model import Grant, GrantStatus

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 4096
MAX_TOKEN_LENGTH = 64 * 1024

MAX_CLAIM_LIMIT = 10_000


def _check_text(name: str, value: object, *, max_length: int, empty_ok: bool) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, not {type(value).__name__}")
    if not value and not empty_ok:
        raise InvalidArgument(f"{name} must not be empty")
    if len(value) > max_length:
        raise InvalidArgument(f"{name} is longer than {max_length} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidArgument(f"{name} contains control characters")
    return value


def check_grant_id(grant_id: object) -> str:
    return _check_text("grant_id", grant_id, max_length=MAX_ID_LENGTH, empty_ok=False)


def check_label(label: object) -> str:
    return _check_text("label", label, max_length=MAX_ID_LENGTH, empty_ok=True)


def check_reason(reason: object) -> str:
    return _check_text("reason", reason, max_length=MAX_TEXT_LENGTH, empty_ok=False)


def _check_time(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number of epoch seconds")


def _check_token(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{name} must be a non-empty string")
    if len(value) > MAX_TOKEN_LENGTH:
        raise InvalidArgument(f"{name} is longer than {MAX_TOKEN_LENGTH} characters")


def check_time(name: str, value: object) -> float:
    _check_time(name, value)
    assert isinstance(value, int | float)
    return float(value)


def check_expected_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgument("expected_version must be an integer >= 1")
    return version


def check_status(status: object) -> GrantStatus:
    if not isinstance(status, GrantStatus):
        raise InvalidArgument(f"status must be a GrantStatus, not {type(status).__name__}")
    return status


def encode_claims(claims: Mapping[str, Any]) -> bytes:
    if not isinstance(claims, Mapping):
        raise InvalidArgument("id_claims must be a mapping")
    try:
        return json.dumps(dict(claims), separators=(",", ":"), sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgument("id_claims are not JSON-serialisable") from exc


def validate_grant(grant: Grant) -> None:
    """Raise InvalidArgument (naming the field, never its secret value) for a malformed grant."""
    if not isinstance(grant, Grant):
        raise InvalidArgument(f"expected a Grant, not {type(grant).__name__}")
    check_grant_id(grant.grant_id)
    check_label(grant.label)
    for name in ("issuer", "client_id", "subject"):
        _check_text(name, getattr(grant, name), max_length=MAX_TEXT_LENGTH, empty_ok=False)
    _check_text("scope", grant.scope, max_length=MAX_TEXT_LENGTH, empty_ok=True)
    check_status(grant.status)
    _check_token("access_token", grant.access_token, optional=False)
    _check_token("refresh_token", grant.refresh_token, optional=True)
    for name in ("access_expires_at", "created_at", "updated_at"):
        _check_time(name, getattr(grant, name))
    _check_time("refresh_started_at", grant.refresh_started_at, optional=True)
    _check_time("access_issued_at", grant.access_issued_at, optional=True)
    _check_time("refresh_expires_at", grant.refresh_expires_at, optional=True)
    check_expected_version(grant.version)
    if grant.last_error is not None:
        check_reason(grant.last_error)
    encode_claims(grant.id_claims)


def validate_tokens(tokens: TokenSet) -> None:
    if not isinstance(tokens, TokenSet):
        raise InvalidArgument(f"expected a TokenSet, not {type(tokens).__name__}")
    _check_token("access_token", tokens.access_token, optional=False)
    _check_token("refresh_token", tokens.refresh_token, optional=True)
    _check_time("expires_at", tokens.expires_at)
    _check_time("received_at", tokens.received_at)
    _check_time("refresh_expires_at", tokens.refresh_expires_at, optional=True)
    _check_text("scope", tokens.scope, max_length=MAX_TEXT_LENGTH, empty_ok=True)
    encode_claims(tokens.id_claims)


def check_due_query(now: object, horizon: object, limit: object) -> tuple[float, float, int]:
    now_f = check_time("now", now)
    horizon_f = check_time("horizon", horizon)
    if horizon_f < 0:
        raise InvalidArgument("horizon must not be negative")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CLAIM_LIMIT:
        raise InvalidArgument(f"limit must be an integer in [1, {MAX_CLAIM_LIMIT}]")
    return now_f, horizon_f, limit


def check_claim(owner: object, lease: object) -> tuple[str, float]:
    owner_s = _check_text("owner", owner, max_length=MAX_ID_LENGTH, empty_ok=False)
    lease_f = check_time("lease", lease)
    if not lease_f > 0:
        raise InvalidArgument("lease must be positive")
    return owner_s, lease_f
