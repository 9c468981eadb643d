"""Configuration checks: the file validates, every file it names exists, the policy parses."""

from __future__ import annotations

from pathlib import Path

from broker.config import Settings, load_settings
from broker.doctor.result import CheckResult, fail, failed, ok, skip, warn
from broker.errors import BrokerError
from broker.server.policy import Policy


def load(path: Path) -> tuple[CheckResult, Settings | None]:
    """``config.load``: :func:`broker.config.load_settings` without the file-existence checks
    (``config.files`` lists every missing file at once instead of stopping at the first)."""
    try:
        settings = load_settings(path, check_files=False)
    except BrokerError as exc:
        return failed("config.load", exc), None
    return ok("config.load", f"{settings.source} is valid"), settings


def named_files(settings: Settings) -> dict[str, Path]:
    """Every file the broker reads at start-up, by its configuration key."""
    files: dict[str, Path] = {
        "[key].uri pin-source": settings.key.pin_file,
        "[grpc].server_cert": settings.grpc.server_cert,
        "[grpc].server_key": settings.grpc.server_key,
        "[grpc].client_ca": settings.grpc.client_ca,
        "[grpc].policy_file": settings.grpc.policy_file,
    }
    optional = {
        "[web].tls_cert": settings.web.tls_cert,
        "[web].tls_key": settings.web.tls_key,
        "[oauth].ca_file": settings.oauth.ca_file,
    }
    files.update({k: v for k, v in optional.items() if v is not None})
    return files


def missing_files(settings: Settings) -> dict[str, Path]:
    return {key: path for key, path in named_files(settings).items() if not path.is_file()}


def files(settings: Settings) -> CheckResult:
    """``config.files``: each named file exists and is a regular file; the store directory
    exists (SQLite) and the audit log directory exists (when configured)."""
    problems = [f"{key}: {path} is missing" for key, path in missing_files(settings).items()]
    store = settings.store.path
    if settings.store.kind == "sqlite" and store is not None and not store.parent.is_dir():
        problems.append(f"[store].path: directory {store.parent} is missing")
    if settings.audit.path is not None and not settings.audit.path.parent.is_dir():
        problems.append(f"[audit].path: directory {settings.audit.path.parent} is missing")
    if problems:
        return fail("config.files", "; ".join(problems))
    return ok("config.files", f"{len(named_files(settings))} files present")


def policy(settings: Settings) -> CheckResult:
    """``config.policy``: the gRPC policy file parses (:meth:`Policy.load`)."""
    path = settings.grpc.policy_file
    if not path.is_file():
        return skip("config.policy", f"policy file {path} is missing (see config.files)")
    try:
        loaded = Policy.load(path)
    except BrokerError as exc:
        return failed("config.policy", exc, f"policy file {path}")
    if not loaded.rules:
        return warn("config.policy", f"policy file {path} allows no identity: every call is denied")
    return ok("config.policy", f"{len(loaded.rules)} identities allowed")
