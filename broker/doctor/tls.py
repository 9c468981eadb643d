"""TLS material checks: the web listener's certificate, the gRPC server certificate and the
client-CA bundle parse, are valid now, do not expire within the warning window, and each
certificate matches its private key. The bundle and key-match rules are serve's own
(:mod:`broker.server.certificates`, which imports no grpc)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from broker.clock import Clock
from broker.doctor.result import CheckResult, fail, ok, skip, warn
from broker.server.certificates import first_non_ca, key_matches


def _load_certs(path: Path) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(path.read_bytes())
    if not certs:
        raise ValueError("no certificate")
    return certs


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _validity(
    name: str, certs: list[x509.Certificate], now: dt.datetime, warn_days: float, what: str
) -> CheckResult | None:
    """A fail/warn result for the first certificate out of its validity window, else None."""
    soon = now + dt.timedelta(days=warn_days)
    for cert in certs:
        after = cert.not_valid_after_utc
        if after <= now:
            return fail(name, f"{what} {_subject(cert)} expired on {after:%Y-%m-%d %H:%M} UTC")
        if cert.not_valid_before_utc > now:
            return fail(
                name,
                f"{what} {_subject(cert)} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            )
    for cert in certs:
        after = cert.not_valid_after_utc
        if after <= soon:
            days = (after - now).total_seconds() / 86400
            return warn(
                name,
                f"{what} {_subject(cert)} expires in {days:.1f} days "
                f"({after:%Y-%m-%d} UTC; warning window {warn_days:g} days)",
            )
    return None


def _now(clock: Clock) -> dt.datetime:
    return dt.datetime.fromtimestamp(clock.now(), dt.UTC)


def check_pair(
    name: str, cert_path: Path, key_path: Path, clock: Clock, warn_days: float
) -> CheckResult:
    """A certificate chain file and its private key (PEM, unencrypted as serve loads them)."""
    if not cert_path.is_file() or not key_path.is_file():
        return skip(name, "certificate or key file missing (see config.files)")
    try:
        certs = _load_certs(cert_path)
    except (OSError, ValueError):
        return fail(name, f"{cert_path} is not a PEM certificate")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except TypeError:
        return fail(name, f"{key_path} is encrypted: serve needs an unencrypted key")
    except (OSError, ValueError):
        # cryptography's message could quote key material: name the file only.
        return fail(name, f"{key_path} is not a PEM private key")
    if not key_matches(certs[0], key):
        return fail(name, f"the private key {key_path} does not match the certificate {cert_path}")
    now = _now(clock)
    problem = _validity(name, certs, now, warn_days, "certificate")
    if problem is not None:
        return problem
    leaf = certs[0]
    return ok(
        name,
        f"{_subject(leaf)} valid until {leaf.not_valid_after_utc:%Y-%m-%d} UTC, key matches",
    )


def check_ca_bundle(name: str, path: Path, clock: Clock, warn_days: float) -> CheckResult:
    """The client-CA bundle: CA certificates only, each valid now and beyond the window."""
    if not path.is_file():
        return skip(name, "client CA file missing (see config.files)")
    try:
        certs = _load_certs(path)
    except (OSError, ValueError):
        return fail(name, f"{path} holds no PEM certificate")
    not_ca = first_non_ca(certs)
    if not_ca is not None:
        return fail(name, f"{path}: {_subject(not_ca)} is not a CA certificate")
    problem = _validity(name, certs, _now(clock), warn_days, "CA")
    if problem is not None:
        return problem
    return ok(name, f"{len(certs)} CA certificate(s), all valid beyond {warn_days:g} days")
