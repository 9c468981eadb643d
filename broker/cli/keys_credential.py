"""``broker keys credential import|show|remove``: the machine credential (LEARCredentialMachine).

``import`` checks the credential the DOME Issuer gave the key's did:key (its type, the binding
to that did, the validity window, the RS256 signature by its x5c certificate and that
certificate's organizationIdentifier against the ``did:elsi:`` issuer, and the chain to
``--ca-bundle`` when given) and stores it (:mod:`broker.credentials.store`); an existing one is
only replaced with ``--replace``. Each command runs through :func:`broker.cli.keys_audited.run_audited`: one
audit record (``keys.credential.import`` / ``.replace`` / ``.show`` / ``.remove``) carrying the
credential's id and SHA-256 (a credential is not secret).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from broker.cli.keys_audited import (
    KEY_URI_ENV,
    Body,
    Deps,
    Facts,
    Result,
    audit_log_path,
    run_audited,
)
from broker.cli.keys_token import get_key, key_target, open_token
from broker.credentials.lear import MAX_JWT_BYTES, LearCredentialMachine, parse_credential
from broker.credentials.store import (
    credential_path,
    load_credential,
    remove_credential,
    save_credential,
)
from broker.credentials.verify import organization_identifier, verify_credential
from broker.errors import CredentialError, InvalidArgument

CREDENTIAL_ENV = "BROKER_CREDENTIAL"
MAX_CA_BUNDLE_BYTES = 1024 * 1024
_DAY = 86400.0


def credential_file(args: argparse.Namespace) -> Path:
    """``--credential``, else ``$BROKER_CREDENTIAL``, else next to the audit log."""
    configured = getattr(args, "credential", None) or os.environ.get(CREDENTIAL_ENV)
    path = credential_path(configured, audit_log_path(args))
    assert path is not None  # the audit log always has a path
    return path


def _now(deps: Deps) -> datetime:
    return datetime.fromtimestamp(deps.clock.now(), UTC)


def _read(path: str, what: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read the {what} {path}: {exc.strerror}") from None


def _read_jwt(path: str) -> str:
    data = _read(path, "credential file", MAX_JWT_BYTES + 64)  # parse refuses the oversize
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise CredentialError(
            f"the credential file {path} is not a compact JWT (not ASCII)", reason="malformed"
        ) from None


def _read_ca_bundle(path: str) -> list[x509.Certificate]:
    data = _read(path, "CA bundle", MAX_CA_BUNDLE_BYTES)
    if len(data) > MAX_CA_BUNDLE_BYTES:
        raise InvalidArgument(f"the CA bundle {path} is too large")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InvalidArgument(f"the CA bundle {path} holds no PEM certificate") from None


def _key_did(deps: Deps, args: argparse.Namespace, facts: Facts, *, read_only: bool) -> str:
    target = key_target(deps, args, facts, need_label=True)
    with open_token(deps, target, args, read_only=read_only) as (store, _):
        return get_key(store, target, facts).did


def _learn(facts: Facts, cred: LearCredentialMachine) -> None:
    facts.credential_id = cred.credential_id
    facts.credential_sha256 = cred.sha256


def days_left(cred: LearCredentialMachine, now: datetime) -> int:
    """Whole days until expiry (negative once expired)."""
    return int(cred.seconds_left(now) // _DAY)


def credential_document(
    cred: LearCredentialMachine, *, now: datetime, path: Path, status: str
) -> dict[str, Any]:
    cert = cred.signer_certificate
    m = cred.mandator
    return {
        "id": cred.credential_id,
        "sha256": cred.sha256,
        "file": str(path),
        "status": status,
        "issuer": cred.issuer,
        "certificate": {
            "subject": cert.subject.rfc4514_string(),
            "organizationIdentifier": organization_identifier(cert),
            "issuer": cert.issuer.rfc4514_string(),
            "serialNumber": format(cert.serial_number, "x"),
        },
        "subject": cred.subject_did,
        "mandator": {
            "organization": m.organization,
            "organizationIdentifier": m.organization_identifier,
            "commonName": m.common_name,
            "country": m.country,
            "email": m.email,
            "serialNumber": m.serial_number,
        },
        "mandatee": dict(cred.mandatee),
        "powers": [
            {"type": p.type, "domain": p.domain, "function": p.function, "action": list(p.action)}
            for p in cred.powers
        ],
        "validFrom": cred.valid_from.isoformat(),
        "validUntil": cred.valid_until.isoformat(),
        "secondsLeft": int(cred.seconds_left(now)),
        "daysLeft": days_left(cred, now),
    }


def credential_text(doc: dict[str, Any]) -> str:
    m = doc["mandator"]
    mandator = f"{m['organization']} ({m['organizationIdentifier']})"
    who = ", ".join(v for v in (m["commonName"], m["email"], m["country"]) if v)
    mandatee = ", ".join(f"{k}={v}" for k, v in doc["mandatee"].items())
    powers = "".join(
        f"\n              {p['function']} @ {p['domain']} ({p['type']}): {', '.join(p['action'])}"
        for p in doc["powers"]
    )
    days = doc["daysLeft"]
    left = f"{days} days left" if doc["secondsLeft"] > 0 else "EXPIRED"
    return (
        f"LEARCredentialMachine {doc['id']}\n"
        f"  status      {doc['status']}\n"
        f"  issuer      {doc['issuer']}\n"
        f"  certificate {doc['certificate']['subject']}\n"
        f"  subject     {doc['subject']}\n"
        f"  mandator    {mandator}{': ' + who if who else ''}\n"
        f"  mandatee    {mandatee}\n"
        f"  powers{powers or '      (none)'}\n"
        f"  valid       {doc['validFrom']} .. {doc['validUntil']} ({left})\n"
        f"  sha256      {doc['sha256']}\n"
        f"  file        {doc['file']}\n"
    )


# --- command bodies -----------------------------------------------------------------------------


def cmd_credential_import(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    path = credential_file(args)
    cred = parse_credential(_read_jwt(args.file))
    _learn(facts, cred)
    exists = path.exists()
    if exists and not args.replace:
        raise InvalidArgument(
            f"a machine credential is already stored at {path}; pass --replace to replace it"
        )
    ca_bundle = _read_ca_bundle(args.ca_bundle) if args.ca_bundle else None
    did = _key_did(deps, args, facts, read_only=False)
    now = _now(deps)
    verify_credential(cred, did=did, now=now, ca_bundle=ca_bundle)
    if exists:
        facts.action = "keys.credential.replace"
    save_credential(path, cred)
    document = credential_document(cred, now=now, path=path, status="ok")
    document["replaced"] = exists
    verb = "replaced the stored credential with" if exists else "imported"
    return document, f"{verb} the credential below, bound to {did}\n" + credential_text(document)


def cmd_credential_show(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    path = credential_file(args)
    cred = load_credential(path)
    _learn(facts, cred)
    has_key = bool(args.key or os.environ.get(KEY_URI_ENV))
    did = _key_did(deps, args, facts, read_only=True) if has_key else cred.subject_did
    now = _now(deps)
    try:
        verify_credential(cred, did=did, now=now)
        status = "ok" if has_key else "ok (binding not checked: no --key)"
    except CredentialError as exc:
        status = f"{exc.reason}: {exc.message}"
    document = credential_document(cred, now=now, path=path, status=status)
    return document, credential_text(document)


def cmd_credential_remove(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    path = credential_file(args)
    try:
        _learn(facts, load_credential(path))
    except CredentialError as exc:
        if exc.reason == "missing":
            raise
        # A damaged file still goes; the record names its bytes.
        raw = Path(path).read_bytes().strip()
        facts.credential_sha256 = hashlib.sha256(raw).hexdigest()
    remove_credential(path)
    document = {
        "removed": True,
        "id": facts.credential_id,
        "sha256": facts.credential_sha256,
        "file": str(path),
    }
    return document, f"removed the machine credential {facts.credential_id} ({path})\n"


# --- argparse registration ----------------------------------------------------------------------

_CREDENTIAL_COMMANDS: tuple[tuple[str, str, str, Body], ...] = (
    (
        "import",
        "keys.credential.import",
        "check and store the LEARCredentialMachine issued to the key's did:key",
        cmd_credential_import,
    ),
    (
        "show",
        "keys.credential.show",
        "show the stored credential: mandator, mandatee, powers, issuer, validity",
        cmd_credential_show,
    ),
    ("remove", "keys.credential.remove", "remove the stored credential", cmd_credential_remove),
)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    deps: Deps,
    common: argparse.ArgumentParser,
) -> None:
    """Add ``keys credential ...`` to the ``keys`` group."""
    group = sub.add_parser(
        "credential",
        help="the machine credential (LEARCredentialMachine): import, show, remove",
        description="the LEARCredentialMachine used for machine-to-machine token requests",
    )
    csub = group.add_subparsers(dest="credential_command", metavar="COMMAND", required=True)
    parsers: dict[str, argparse.ArgumentParser] = {}
    for name, action, help_text, body in _CREDENTIAL_COMMANDS:
        p = csub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.add_argument(
            "--credential",
            metavar="FILE",
            help=f"where the credential is kept (default: ${CREDENTIAL_ENV}, else "
            "lear-credential-machine.jwt next to the audit log)",
        )
        p.set_defaults(
            handler=functools.partial(run_audited, deps, action, body),
            command=f"keys credential {name}",
        )
        parsers[name] = p
    imp = parsers["import"]
    imp.add_argument("--file", required=True, metavar="FILE", help="the credential (a JWT)")
    imp.add_argument(
        "--ca-bundle",
        metavar="PEM",
        help="CA certificates: the credential's x5c certificate must chain to one of them",
    )
    imp.add_argument("--replace", action="store_true", help="replace a stored credential")
