"""``credential``: the machine credential (LEARCredentialMachine) is usable, and for how long.

OK when none is stored (the broker then makes no machine-to-machine token requests) or when it
verifies for our did:key with more than ``warn_days`` left; WARN within ``warn_days`` of its
expiry; FAIL once expired, not yet valid, bound to another did, badly signed or unreadable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from broker.clock import Clock
from broker.config import Settings
from broker.credentials.store import credential_path, load_credential
from broker.credentials.verify import verify_credential
from broker.doctor.result import CheckResult, failed, ok, warn
from broker.errors import CredentialError

NAME = "credential"
_DAY = 86400.0


def configured_path(settings: Settings) -> Path | None:
    """``[credential] path``, else next to ``[audit] path``; None: no credential location."""
    return credential_path(settings.credential.path, settings.audit.path)


def check_credential(
    path: Path | None, did: str | None, clock: Clock, warn_days: float
) -> CheckResult:
    if path is None:
        return ok(NAME, "no [credential] path and no [audit] path: no machine credential")
    try:
        cred = load_credential(path)
    except CredentialError as exc:
        if exc.reason == "missing":
            return ok(NAME, f"none at {path} (no machine-to-machine token requests)")
        return failed(NAME, exc)
    now = datetime.fromtimestamp(clock.now(), UTC)
    try:
        verify_credential(cred, did=did or cred.subject_did, now=now)
    except CredentialError as exc:
        return failed(NAME, exc, cred.credential_id)
    days = cred.seconds_left(now) / _DAY
    summary = (
        f"{cred.credential_id} from {cred.issuer} for {cred.mandator.organization}, "
        f"valid until {cred.valid_until.isoformat()} ({days:.0f} days left)"
    )
    if days < warn_days:
        return warn(NAME, f"expires in less than {warn_days:.0f} days: {summary}; import a new one")
    if did is None:
        return warn(NAME, f"binding not checked (our did is unknown): {summary}")
    return ok(NAME, summary)
