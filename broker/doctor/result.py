"""What a doctor check returns, and how a list of them becomes a report and an exit status."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.errors import BrokerError, ConfigError, InvalidArgument

DEFAULT_WARN_DAYS = 30.0  # certificates expiring sooner than this warn


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"  # not run: a check it depends on failed (the detail says which)


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: a stable dotted ``name``, a status and a one-line reason.

    ``detail`` never holds a secret (no PIN, token, assertion or key material).
    """

    name: str
    status: Status
    detail: str
    caller_error: bool = field(default=False, compare=False)
    """Failed on an error ``broker serve`` exits 2 for (configuration, invalid argument)."""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail}


def ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.OK, _one_line(detail))


def warn(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.WARN, _one_line(detail))


def fail(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.FAIL, _one_line(detail))


def skip(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.SKIP, _one_line(detail))


def failed(name: str, exc: BaseException, what: str = "") -> CheckResult:
    """A failure built from an exception: broker errors by their (secret-free) message and
    reason code, anything else by its type only (its text may hold anything)."""
    prefix = f"{what}: " if what else ""
    if isinstance(exc, BrokerError):
        caller = isinstance(exc, ConfigError | InvalidArgument)
        text = _one_line(f"{prefix}{exc.message} [{exc.reason}]")
        return CheckResult(name, Status.FAIL, text, caller_error=caller)
    return fail(name, f"{prefix}unexpected {type(exc).__name__} [internal]")


def _one_line(text: str) -> str:
    return " ".join(text.split())


CONFIG_CHECK_PREFIX = "config."
EXIT_FAILED = 1
EXIT_CONFIG = 2


def exit_code(results: Sequence[CheckResult]) -> int:
    """2 when a configuration check failed, or any check on a configuration error (e.g. a
    PKCS#11 module that does not load): the status ``broker serve`` exits with for the same
    failure. 1 when any other check failed, else 0 (warnings and skips alone do not fail)."""
    failing = [r for r in results if r.status is Status.FAIL]
    if any(r.caller_error or r.name.startswith(CONFIG_CHECK_PREFIX) for r in failing):
        return EXIT_CONFIG
    return EXIT_FAILED if failing else 0


def summary(results: Sequence[CheckResult]) -> dict[str, int]:
    return {s.value: sum(1 for r in results if r.status is s) for s in Status}


def to_json(results: Sequence[CheckResult], *, config: str) -> str:
    """The ``--json`` document: ``{"config", "ok", "summary", "checks": [{name, status,
    detail}]}``; ``ok`` is false exactly when the exit status is non-zero."""
    doc: dict[str, Any] = {
        "config": config,
        "ok": exit_code(results) == 0,
        "summary": summary(results),
        "checks": [r.as_dict() for r in results],
    }
    return json.dumps(doc, indent=2)


def to_text(results: Sequence[CheckResult]) -> str:
    """One line per check, ``status  name  detail``, then a summary line."""
    width = max((len(r.name) for r in results), default=0)
    lines = [f"{r.status.value:<4}  {r.name:<{width}}  {r.detail}" for r in results]
    counts = summary(results)
    lines.append(
        ", ".join(f"{n} {s}" for s, n in counts.items())
        + ("" if exit_code(results) == 0 else " -- NOT ready")
    )
    return "\n".join(lines)
