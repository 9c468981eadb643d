"""The runtime audit trail: grant lifecycle events of the running service (TEST-CATALOGUE H01).

Events (``AuditAction``): ``grant.created`` (a login completed), ``grant.reauthorization_required``
(a grant died: written once, by the refresh that flipped its status, A05), ``grant.revoked``,
``token.refresh_rejected`` (a refresh response failed validation, e.g. the id_token: B10),
``login.failed`` (reason code) and ``caller.denied`` (identity + method, no grant inventory: E05).
An :class:`AuditEvent` holds identifiers and reason codes only: never a token, code, state,
nonce, PIN or request object; every value is checked against the secret patterns of
:mod:`broker.telemetry.redaction` and refused when it matches one.

Events (:mod:`broker.audit.events`) and sinks (:class:`AuditSink`, :mod:`broker.audit.sinks`):

* :class:`FileAuditSink` appends to the hash-chained log of :mod:`broker.audit.log` (the same file
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
import logging

from broker.audit.events import AuditEvent
from broker.audit.sinks import (
    DEFAULT_TIMEOUT,
    AuditFailureObserver,
    AuditSink,
    NullAuditSink,
    NullFailureObserver,
    observe_failure,
    sink_name,
)
from broker.errors import AuditUnavailable, BrokerError, InvalidArgument

__all__ = ["AuditTrail"]

_log = logging.getLogger("broker.audit")


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
        observe_failure(self._observer, sink_name(self._sink), str(event.action))
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
