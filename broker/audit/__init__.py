"""Audit: the hash-chained log and the runtime trail that writes to it.

* :mod:`broker.audit.log` - the append-only, hash-chained JSON-lines file (key ceremonies and
  the running service share one chain); verification.
* :mod:`broker.audit.events` - runtime events (grant, token, login and caller actions) as
  identifiers and reason codes, and their mapping onto log records.
* :mod:`broker.audit.sinks` - where events go: the log file, the ``broker.audit`` logger,
  several sinks at once.
* :mod:`broker.audit.trail` - :class:`AuditTrail`, the fail-closed / best-effort policy the
  token core, the login service, the gRPC servicer and the composition root hold.

The package sits below ``tokens``, ``login`` and ``server`` (all write to the trail) and
imports none of them. This module re-exports the log's names, as ``from broker.audit import
AuditLog`` worked before the package existed.
"""

from broker.audit.log import (
    CREDENTIAL_FIELDS,
    FIELDS,
    FIELDS_WITH_CREDENTIAL,
    GENESIS,
    OUTCOMES,
    AuditLog,
    AuditRecord,
    VerifyResult,
    default_operator,
    rfc3339_utc,
    verified_records,
    verify_chain,
)

__all__ = [
    "CREDENTIAL_FIELDS",
    "FIELDS",
    "FIELDS_WITH_CREDENTIAL",
    "GENESIS",
    "OUTCOMES",
    "AuditLog",
    "AuditRecord",
    "VerifyResult",
    "default_operator",
    "rfc3339_utc",
    "verified_records",
    "verify_chain",
]
