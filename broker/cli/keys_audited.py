"""One audited key ceremony: the facts it records and the runner that records them.

Each ``broker keys`` command body is ``(Deps, args, Facts) -> (document, text)``;
:func:`run_audited` checks the audit log *before* the token is touched (a ceremony never runs
unaudited), runs the body in a span and appends exactly one record (:mod:`broker.audit`)
whether it succeeded or failed, then prints the document (``--json``) or the text. Errors
propagate as :class:`broker.errors.BrokerError`; :mod:`broker.cli.errors` turns them into one
line on stderr and the exit status.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from broker.audit import AuditLog
from broker.ceremony import output
from broker.ceremony.backend import KeyBackend
from broker.ceremony.faults import CrashPoint
from broker.ceremony.orphans import INTENT_SUFFIX
from broker.ceremony.signals import deferred_signals
from broker.clock import Clock, SystemClock
from broker.errors import (
    AuditError,
    BrokerError,
)
from broker.keys.api import KeyInfo

KEY_URI_ENV = "BROKER_KEY_URI"
AUDIT_LOG_ENV = "BROKER_AUDIT_LOG"
DEFAULT_AUDIT_LOG = "broker-audit.jsonl"


Result = tuple[dict[str, Any], str]


@dataclass
class Facts:
    """What the audit record will say about the key, filled in as the command learns it.

    A creating command calls :meth:`intend` just before it creates the key: that appends the
    ``<action>.intent`` record and enters the critical section (SIGINT/SIGTERM deferred) that
    :func:`run_audited` leaves only after the completion record is written.
    """

    key_uri: str | None = None
    did: str | None = None
    fingerprint: str | None = None
    action: str = ""
    audit: AuditLog | None = None
    crash: CrashPoint = field(default_factory=CrashPoint)
    critical: ExitStack = field(default_factory=ExitStack)
    intended: bool = False
    credential_id: str | None = None  # credential ceremonies: the credential the record names
    credential_sha256: str | None = None

    def learn(self, info: KeyInfo) -> None:
        self.key_uri = info.uri or self.key_uri
        self.did = info.did
        self.fingerprint = info.fingerprint

    def intend(self, key_uri: str) -> None:
        """Record the intent to create the key ``key_uri`` names; defer signals from here on."""
        assert self.audit is not None  # run_audited sets it
        self.critical.enter_context(deferred_signals())
        self.intended = True
        self.key_uri = key_uri
        self.audit.append(self.action + INTENT_SUFFIX, outcome="ok", key_uri=key_uri)
        self.crash.reached("after-intent")

    def created(self) -> None:
        self.crash.reached("after-create")


@dataclass(frozen=True)
class Deps:
    backend_factory: Callable[[], KeyBackend]
    clock: Clock = field(default_factory=SystemClock)
    tracer_provider: trace.TracerProvider | None = None  # None: the global provider

    @functools.cached_property
    def tracer(self) -> trace.Tracer:
        return trace.get_tracer("broker.ceremony", tracer_provider=self.tracer_provider)

    @functools.cached_property
    def backend(self) -> KeyBackend:
        return self.backend_factory()


Body = Callable[[Deps, argparse.Namespace, Facts], Result]


def audit_log_path(args: argparse.Namespace) -> str:
    value: str | None = getattr(args, "audit_log", None)
    return value or os.environ.get(AUDIT_LOG_ENV) or DEFAULT_AUDIT_LOG


def run_audited(deps: Deps, action: str, body: Body, args: argparse.Namespace) -> int:
    """Run ``body`` and append exactly one audit record for it, on success and on failure.

    A creating body also appends ``<action>.intent`` before it creates the key; from there
    until the completion record is written SIGINT and SIGTERM are deferred (``facts.critical``).
    """
    audit = AuditLog(audit_log_path(args), operator=args.operator, clock=deps.clock)
    audit.check_writable()  # fail before the token is touched
    facts = Facts(action=action, audit=audit, crash=CrashPoint.from_env())
    with deps.tracer.start_as_current_span(f"ceremony.{action}") as span, facts.critical:
        span.set_attribute("ceremony.action", action)
        try:
            document, text = body(deps, args, facts)
        except BaseException as exc:
            if isinstance(exc, BrokerError):
                reason = exc.reason
            elif isinstance(exc, KeyboardInterrupt):
                reason = "interrupted"
            else:
                reason = "internal"
            span.set_attribute("error.reason", reason)
            span.set_attribute("outcome", "error")
            if facts.did:
                span.set_attribute("kid", facts.did)
            try:
                audit.append(
                    facts.action,
                    outcome="error",
                    key_uri=facts.key_uri,
                    did=facts.did,
                    fingerprint=facts.fingerprint,
                    error=reason,
                    credential_id=facts.credential_id,
                    credential_sha256=facts.credential_sha256,
                )
            except AuditError as audit_exc:
                raise AuditError(
                    f"{action} failed ({reason}) and its audit record could not be written: "
                    f"{audit_exc.message}"
                ) from exc
            raise
        if facts.did:
            span.set_attribute("kid", facts.did)
        span.set_attribute("outcome", "ok")
        try:
            audit.append(
                facts.action,  # a body may name what it did (credential import -> replace)
                outcome="ok",
                key_uri=facts.key_uri,
                did=facts.did,
                fingerprint=facts.fingerprint,
                credential_id=facts.credential_id,
                credential_sha256=facts.credential_sha256,
            )
        except AuditError as exc:
            span.set_attribute("error.reason", exc.reason)
            raise AuditError(
                f"{action} succeeded but its audit record could not be written: {exc.message}"
            ) from exc
        if facts.intended:
            facts.crash.reached("after-completion")
    output.emit(sys.stdout, as_json=args.json, document=document, text=text)
    return 0
