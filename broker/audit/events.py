"""Runtime audit events: what happened, as identifiers and reason codes only (see
:mod:`broker.audit.trail`), and how an event maps onto a record of the hash-chained log of
:mod:`broker.audit.log`."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import quote, unquote

from broker.errors import InvalidArgument
from broker.telemetry.redaction import REDACTED, redact_text

Outcome = Literal["ok", "error"]

_MAX_VALUE = 256
_REASON = re.compile(r"^[a-z0-9][a-z0-9_.:\-]{0,63}$")
_TARGET_PREFIX = "event:"
_TARGET_FIELDS = ("grant_id", "label", "caller", "method")


class AuditAction(enum.StrEnum):
    GRANT_CREATED = "grant.created"
    GRANT_REAUTHORIZATION_REQUIRED = "grant.reauthorization_required"
    GRANT_REVOKED = "grant.revoked"
    TOKEN_REFRESH_REJECTED = "token.refresh_rejected"  # noqa: S105 - an event name
    LOGIN_FAILED = "login.failed"
    CALLER_DENIED = "caller.denied"


@dataclass(frozen=True)
class AuditEvent:
    """One audit event. Every field is an identifier or a reason code, never a secret.

    ``subject`` is the grant's OIDC ``sub`` (a did for DOME), ``caller`` the mTLS identity of
    the gRPC caller (URI SAN or CN), ``method`` the gRPC method, ``reason`` a
    :attr:`broker.errors.BrokerError.reason` code.
    """

    action: AuditAction
    outcome: Outcome
    grant_id: str | None = None
    label: str | None = None
    caller: str | None = None
    subject: str | None = None
    method: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.action, AuditAction):
            raise InvalidArgument("audit action must be an AuditAction")
        if self.outcome not in ("ok", "error"):
            raise InvalidArgument("audit outcome must be 'ok' or 'error'")
        if self.reason is not None and not _REASON.fullmatch(self.reason):
            raise InvalidArgument("audit reason must be a short reason code")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("action", "outcome") or value is None:
                continue
            if not isinstance(value, str) or not value or len(value) > _MAX_VALUE:
                raise InvalidArgument(f"audit field {f.name} must be 1-{_MAX_VALUE} characters")
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                raise InvalidArgument(f"audit field {f.name} holds a control character")
            if REDACTED in redact_text(value):
                raise InvalidArgument(f"audit field {f.name} looks like a secret: refused")


def record_fields(event: AuditEvent) -> dict[str, str | None]:
    """How an event maps onto a :mod:`broker.audit.log` record (whose members are fixed).

    ``action``/``outcome`` as themselves; ``did`` = subject; ``error`` = reason; ``key_uri`` =
    the event's target, ``event:grant_id=..;label=..;caller=..;method=..`` (present members
    only, values percent-encoded); ``fingerprint`` is unused. :func:`event_from_record`
    reverses it.
    """
    parts = [
        f"{name}={quote(value, safe='')}"
        for name in _TARGET_FIELDS
        if (value := getattr(event, name)) is not None
    ]
    return {
        "action": str(event.action),
        "outcome": event.outcome,
        "key_uri": _TARGET_PREFIX + ";".join(parts),
        "did": event.subject,
        "error": event.reason,
    }


def event_from_record(record: Mapping[str, Any]) -> AuditEvent:
    """The :class:`AuditEvent` a runtime record (from :func:`record_fields`) was written from.

    Raises :class:`InvalidArgument` for a record that is not a runtime event (e.g. ``keys.*``).
    """
    target = record.get("key_uri")
    if not isinstance(target, str) or not target.startswith(_TARGET_PREFIX):
        raise InvalidArgument("not a runtime audit event record")
    try:
        action = AuditAction(str(record.get("action")))
    except ValueError as exc:
        raise InvalidArgument("not a runtime audit event action") from exc
    values: dict[str, str] = {}
    body = target[len(_TARGET_PREFIX) :]
    for part in body.split(";") if body else []:
        name, sep, value = part.partition("=")
        if not sep or name not in _TARGET_FIELDS or name in values:
            raise InvalidArgument("malformed audit event target")
        values[name] = unquote(value)
    outcome = record.get("outcome")
    if outcome not in ("ok", "error"):
        raise InvalidArgument("audit record outcome must be 'ok' or 'error'")
    return AuditEvent(
        action=action,
        outcome=outcome,
        subject=record.get("did"),
        reason=record.get("error"),
        **values,
    )


def reason_code(value: str) -> str:
    """``value`` when it is a valid reason code, else ``"other"`` (an error path must not fail
    on its own audit record)."""
    return value if _REASON.fullmatch(value) else "other"


def identifier(value: str | None) -> str | None:
    """A caller-supplied identifier made acceptable to :class:`AuditEvent`: control
    characters replaced by ``?``, cut to the maximum length; a secret-looking value becomes
    ``"redacted"``."""
    if value is None or not value:
        return None
    text = "".join("?" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in value)[:_MAX_VALUE]
    return "redacted" if REDACTED in redact_text(text) else text
