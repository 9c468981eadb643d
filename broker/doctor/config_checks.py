"""Configuration checks: the file validates, every file it names exists, the policy parses, the
kid form suits the authorization server."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from broker.app import settings as app_settings
from broker.config import Settings
from broker.doctor.result import CheckResult, fail, failed, ok, skip, warn
from broker.errors import BrokerError
from broker.keys.kid import KidFormat
from broker.server.policy import Policy


def load(path: Path) -> tuple[CheckResult, Settings | None]:
    """``config.load``: :func:`broker.app.settings.load_settings` without the file-existence checks
    (``config.files`` lists every missing file at once instead of stopping at the first)."""
    try:
        settings = app_settings.load_settings(path, check_files=False)
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


def kid(settings: Settings) -> CheckResult:
    """``config.kid``: the ``kid`` form of our JWS headers and where the key set is served. Warns
    when a non-did kid meets the DOME Verifier (``dome_compat`` on or a DOME issuer): it refuses
    any other kid at the token endpoint (401 invalid_client); and when a thumbprint kid has no
    key set to be resolved against."""
    kid_format = app_settings.kid_format(settings)
    path = settings.web.jwks_path
    served = (
        f"key set at {settings.web.public_base_url.rstrip('/')}{path}"
        if path is not None
        else "no key set served"
    )
    host = urlsplit(settings.oauth.issuer).hostname or ""
    dome = settings.oauth.dome_compat or "dome-marketplace" in host
    if kid_format is not KidFormat.DID and dome:
        return warn(
            "config.kid",
            f'kid_format "{kid_format}" with the DOME Verifier: it accepts only the bare did as '
            "kid (a did-registered client gets 401 invalid_client at the token endpoint); set "
            '[oauth].kid_format = "did", or dome_compat = false for a standards-only server',
        )
    if kid_format is KidFormat.JWK_THUMBPRINT and path is None:
        return warn(
            "config.kid",
            "kid_format jwk_thumbprint but [web].jwks_path is off: nothing publishes the key under "
            "that kid (register a jwks_uri and serve it)",
        )
    return ok("config.kid", f'kid_format "{kid_format}"; {served}')
