"""The runtime audit trail: grant lifecycle events of the running service (TEST-CATALOGUE H01).

Events (``AuditAction``): ``grant.created`` (a login completed), ``grant.reauthorization_required``
(a grant died: written once, by the refresh that flipped its status, A05), ``grant.revoked``,
``token.refresh_rejected`` (a refresh response failed validation, e.g. the id_token: B10),
``login.failed`` (reason code) and ``caller.denied`` (identity + method, no grant inventory: E05).
An :class:`AuditEvent` holds identifiers and reason codes only: never a token, code, state,
nonce, PIN or request object; every value is checked against the secret patterns of
:mod:`broker.telemetry.redaction` and refused when it matches one.

Sinks (:class:`AuditSink`):

* :class:`FileAuditSink` appends to the hash-chained log of :mod:`broker.audit` (the same file
  and chain as the key ceremonies; their actions are ``keys.*``, the service's are ``grant.*``,
  ``token.*``, ``login.*`` and ``caller.*``). The blocking append runs on the sink's own
  worker thread; a write that has not finished within ``timeout`` counts as failed and is
  abandoned: it is never started later, and one already waiting for the file lock gives up as
  soon as it gets it (residual: a write already past that point, e.g. stuck in ``fsync``, may
  still land).
* :class:`FanoutAuditSink` writes to several sinks at once: ``require="all"`` fails when any
  fails, ``require="any"`` only when every one fails (each failure is logged and counted).
* :class:`LogAuditSink` writes to the ``broker.audit`` logger (no ``[audit].path`` configured).

Policy (:class:`AuditTrail`, what the token core, login service and gRPC servicer call):

* **fail closed** - :meth:`AuditTrail.require`, used for ``grant.created`` only. The record is
  written *before* the grant is stored; when it fails (or does not finish within the bound) the
  grant is not stored and the login fails with :class:`broker.errors.AuditUnavailable`
  (retryable; UNAVAILABLE over gRPC). A grant is the only thing from which tokens leave the
  broker, so no token is ever served for a grant the audit trail does not know about.
* **best effort** - :meth:`AuditTrail.note`, every other event. These record something that
  already happened and *reduces* access (a dead or revoked grant, a rejected response, a
  failed login, a denied caller): refusing to serve because of them would not undo the fact,
  and failing a revocation because the audit disk is full would keep access alive. A failure
  is retried once, then logged at ERROR and counted (``broker.audit.failures``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote

from opentelemetry import metrics, trace

from broker.audit import AuditLog
from broker.clock import Clock
from broker.errors import AuditError, AuditUnavailable, BrokerError, InvalidArgument
from broker.telemetry.redaction import REDACTED, redact_text

_log = logging.getLogger("broker.audit")

Outcome = Literal["ok", "error"]
Require = Literal["all", "any"]

DEFAULT_TIMEOUT = 2.0
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
    """How an event maps onto a :mod:`broker.audit` record (whose members are fixed).

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


class AuditSink(Protocol):
    """Takes audit events. ``record`` returns once the event is durable; raises
    :class:`broker.errors.AuditError` (usually :class:`AuditUnavailable`) when it is not."""

    async def record(self, event: AuditEvent) -> None: ...


class AuditFailureObserver(Protocol):
    """Told about every failed audit write (metric/alert hook). Must not block or raise."""

    def audit_failed(self, sink: str, action: str) -> None: ...


class NullFailureObserver:
    def audit_failed(self, sink: str, action: str) -> None:
        return None


class MeterFailureObserver:
    """Counts failures on ``broker.audit.failures`` {sink, action} (both non-secret names)."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter("broker.audit", meter_provider=meter_provider)
        self._failures = meter.create_counter(
            "broker.audit.failures",
            unit="{record}",
            description="Audit records that could not be written (per sink and action)",
        )

    def audit_failed(self, sink: str, action: str) -> None:
        self._failures.add(1, {"sink": sink, "action": action})


class _AbandonableAuditLog(AuditLog):
    """An :class:`AuditLog` whose current append can be called off while it waits for the
    file lock: the flag is checked once the lock is held, right before the record is built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.abandoned: threading.Event | None = None  # set by the single worker thread only

    def _next_link(self, fd: int) -> tuple[int, str]:
        if self.abandoned is not None and self.abandoned.is_set():
            raise AuditError("audit write abandoned after its timeout")
        return super()._next_link(fd)


class FileAuditSink:
    """Appends events to the hash-chained JSON-lines log at ``path`` (see :mod:`broker.audit`),
    one worker thread per sink, each write bounded by ``timeout`` seconds."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock,
        timeout: float = DEFAULT_TIMEOUT,
        operator: str | None = None,
        host: str | None = None,
        name: str | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        if timeout <= 0:
            raise InvalidArgument("audit write timeout must be positive")
        self.path = Path(path)
        self.name = name or f"file:{self.path.name}"
        self._timeout = timeout
        self._log = _AbandonableAuditLog(self.path, operator=operator, host=host, clock=clock)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._tracer = trace.get_tracer("broker.audit", tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        return f"FileAuditSink(path={str(self.path)!r}, timeout={self._timeout})"

    def _write(self, event: AuditEvent, abandoned: threading.Event) -> None:
        if abandoned.is_set():
            return
        self._log.abandoned = abandoned
        try:
            target = record_fields(event)["key_uri"]
            self._log.append(
                str(event.action),
                outcome=event.outcome,
                key_uri=target,
                did=event.subject,
                error=event.reason,
            )
        finally:
            self._log.abandoned = None

    async def record(self, event: AuditEvent) -> None:
        with self._tracer.start_as_current_span("audit.record") as span:
            span.set_attribute("audit.action", str(event.action))
            span.set_attribute("audit.sink", self.name)
            abandoned = threading.Event()
            try:
                future = self._executor.submit(self._write, event, abandoned)
            except RuntimeError as exc:  # executor shut down
                raise AuditUnavailable(f"audit sink {self.name} is closed") from exc
            waiter = asyncio.wrap_future(future)
            try:
                done, _ = await asyncio.wait({waiter}, timeout=self._timeout)
            finally:
                if not waiter.done():  # timed out or cancelled: call the write off
                    abandoned.set()
                    future.cancel()
            if not done:
                span.set_attribute("audit.outcome", "timeout")
                raise AuditUnavailable(
                    f"audit sink {self.name} did not finish a write within {self._timeout} s"
                )
            try:
                waiter.result()
            except AuditError as exc:
                span.set_attribute("audit.outcome", exc.reason)
                raise AuditUnavailable(f"audit sink {self.name} failed: {exc.message}") from exc
            span.set_attribute("audit.outcome", "ok")

    def close(self) -> None:
        """Stop the worker thread (a write stuck in the kernel is left behind, not joined)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class LogAuditSink:
    """Writes events as structured records to the ``broker.audit`` logger (no file configured):
    no chain, no durability; used when ``[audit].path`` is not set."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or _log

    async def record(self, event: AuditEvent) -> None:
        fields_ = {k: v for k, v in record_fields(event).items() if v is not None}
        self._logger.info("audit %s %s", event.action, event.outcome, extra={"audit": fields_})


class NullAuditSink:
    """Takes every event and keeps none: for components built without an audit trail (unit
    tests of the token core); the service always wires a real sink."""

    name = "null"

    async def record(self, event: AuditEvent) -> None:
        return None


def _sink_name(sink: AuditSink) -> str:
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) else type(sink).__name__


class FanoutAuditSink:
    """Writes each event to every sink concurrently, each bounded by ``timeout`` seconds.

    ``require="all"``: the event counts as written only when every sink took it.
    ``require="any"``: when at least one did (a failing or blocked sink is logged and counted
    but does not stop service: Vault's "one of several audit devices" rule).
    """

    def __init__(
        self,
        sinks: Sequence[AuditSink],
        *,
        require: Require = "all",
        timeout: float = DEFAULT_TIMEOUT,
        observer: AuditFailureObserver | None = None,
    ) -> None:
        if not sinks:
            raise InvalidArgument("a fan-out audit sink needs at least one sink")
        if require not in ("all", "any"):
            raise InvalidArgument("require must be 'all' or 'any'")
        if timeout <= 0:
            raise InvalidArgument("audit write timeout must be positive")
        self._sinks = tuple(sinks)
        self._require = require
        self._timeout = timeout
        self._observer: AuditFailureObserver = observer or NullFailureObserver()
        self.name = f"fanout:{require}"

    async def _one(self, sink: AuditSink, event: AuditEvent) -> BrokerError | None:
        try:
            async with asyncio.timeout(self._timeout):
                await sink.record(event)
        except TimeoutError:
            error: BrokerError = AuditUnavailable("audit sink did not finish in time")
        except BrokerError as exc:
            error = exc
        else:
            return None
        name = _sink_name(sink)
        _log.error("audit sink %s failed on %s: %s", name, event.action, error.reason)
        _observe(self._observer, name, str(event.action))
        return error

    async def record(self, event: AuditEvent) -> None:
        results = await asyncio.gather(*(self._one(sink, event) for sink in self._sinks))
        failed = [r for r in results if r is not None]
        if not failed:
            return
        if self._require == "any" and len(failed) < len(self._sinks):
            return
        raise AuditUnavailable(
            f"{len(failed)} of {len(self._sinks)} audit sinks failed (require={self._require})"
        ) from failed[0]


def _observe(observer: AuditFailureObserver, sink: str, action: str) -> None:
    try:
        observer.audit_failed(sink, action)
    except Exception:
        _log.exception("audit failure observer failed")


class AuditTrail:
    """What the service components hold: one sink plus the fail-closed / best-effort policy
    (module docstring). Every call is bounded by ``timeout`` seconds, whatever the sink does."""

    def __init__(
        self,
        sink: AuditSink,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        observer: AuditFailureObserver | None = None,
    ) -> None:
        if timeout <= 0:
            raise InvalidArgument("audit timeout must be positive")
        self._sink = sink
        self._timeout = timeout
        self._observer: AuditFailureObserver = observer or NullFailureObserver()
        self.failures = 0  # failed attempts, for health/doctor and tests

    @classmethod
    def disabled(cls) -> AuditTrail:
        return cls(NullAuditSink())

    async def _attempt(self, event: AuditEvent) -> BrokerError | None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._sink.record(event)
        except TimeoutError:
            error: BrokerError = AuditUnavailable(
                f"the audit trail did not take a record within {self._timeout} s"
            )
        except BrokerError as exc:
            error = exc
        else:
            return None
        self.failures += 1
        _observe(self._observer, _sink_name(self._sink), str(event.action))
        return error

    async def require(self, event: AuditEvent) -> None:
        """Write ``event`` or raise :class:`AuditUnavailable` (one attempt, bounded)."""
        error = await self._attempt(event)
        if error is None:
            return
        _log.error(
            "audit record %s failed (%s): refusing the operation",
            event.action,
            error.reason,
            extra={"grant_id": event.grant_id},
        )
        if isinstance(error, AuditUnavailable):
            raise error
        raise AuditUnavailable(f"audit record {event.action} failed: {error.reason}") from error

    async def note(self, event: AuditEvent) -> bool:
        """Write ``event``, retrying once; never raises. False (logged, counted) when lost."""
        for attempt in (1, 2):
            error = await self._attempt(event)
            if error is None:
                return True
            _log.error(
                "audit record %s failed (attempt %d of 2): %s",
                event.action,
                attempt,
                error.reason,
                extra={"grant_id": event.grant_id},
            )
        return False
