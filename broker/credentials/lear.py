"""The LEARCredentialMachine (DOME): a W3C VC in JWT form issued to the broker's did:key.

The DOME Issuer signs it RS256 with the key of the X.509 certificate in its ``x5c`` header; the
broker presents it, unchanged, inside the Verifiable Presentation of a ``client_credentials``
token request (docs: DOME-PROFILE, "Machine-to-machine"). :func:`parse_credential` reads the
structure (strict JSON, RFC 7515 compact serialisation);
:func:`broker.credentials.verify.verify_credential` checks what the Verifier would check and can
be checked locally, so that an operator gets a reason instead of the Verifier's bare 403:

* the signature (RFC 7518 section 3.3, RS256) with the public key of ``x5c[0]`` (RFC 7515
  section 4.1.6), whose subject organizationIdentifier (OID 2.5.4.97) must equal the issuer
  DID after ``did:elsi:``;
* optionally, the certificate chain to one of the operator's CAs (the Verifier checks none);
* the binding: ``credentialSubject.id``, else the JWT's ``sub``, else ``mandatee.id`` equals
  the broker's did:key, as the Verifier binds it to the VP holder;
* the validity window: the later of ``vc.validFrom`` and ``nbf``, the earlier of
  ``vc.validUntil`` and ``exp``.

Not secret: a credential is shown to the Verifier in every VP. Nothing here logs it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from cryptography import x509

from broker import strict_json
from broker.errors import CredentialError
from broker.jose import b64url_decode_strict, check_compact_size, decode_json_segment

LEAR_CREDENTIAL_MACHINE = "LEARCredentialMachine"
MAX_JWT_BYTES = strict_json.JWT_MAX_BYTES
"""A credential with its certificate chain is a few kilobytes; 64 KiB is far above that."""
_MAX_X5C = 8


def _malformed(message: str) -> CredentialError:
    return CredentialError(f"the credential is malformed: {message}", reason="malformed")


@dataclass(frozen=True)
class Mandator:
    """The organisation that gave the mandate (``credentialSubject.mandate.mandator``)."""

    organization: str
    organization_identifier: str
    common_name: str = ""
    country: str = ""
    email: str = ""
    serial_number: str = ""


@dataclass(frozen=True)
class Power:
    """One power of the mandate (``power[]``). ``action`` is a tuple even when given as one
    string."""

    type: str
    domain: str
    function: str
    action: tuple[str, ...]


@dataclass(frozen=True)
class LearCredentialMachine:
    """A parsed (not yet verified) LEARCredentialMachine.

    ``jwt`` is the compact JWS as received: put it in the VP unchanged. ``subject_did`` is the
    value the Verifier binds to the VP holder. ``valid_from``/``valid_until`` are the effective
    window (aware datetimes). ``sha256`` is the hex SHA-256 of the JWT's ASCII bytes: it names
    this exact credential in audit records. Equality is by ``jwt``.
    """

    jwt: str = field(repr=False)
    subject_did: str
    issuer: str
    valid_from: datetime
    valid_until: datetime
    mandator: Mandator = field(repr=False, compare=False)
    mandatee: Mapping[str, str] = field(repr=False, compare=False)
    powers: tuple[Power, ...] = field(repr=False, compare=False)
    credential_id: str = field(compare=False)
    sha256: str = field(compare=False)
    certificates: tuple[x509.Certificate, ...] = field(repr=False, compare=False, default=())
    """``x5c``: the signer's certificate first, then any intermediates it sent."""

    @property
    def signer_certificate(self) -> x509.Certificate:
        return self.certificates[0]

    def seconds_left(self, now: datetime) -> float:
        """Seconds until ``valid_until`` (negative once expired)."""
        return (self.valid_until - now).total_seconds()


# --- parsing ------------------------------------------------------------------------------------


def _obj(parent: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise _malformed(f"{where}{name} is not a JSON object")
    return value


def _str(parent: Mapping[str, Any], name: str, where: str, *, required: bool = True) -> str:
    value = parent.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise _malformed(f"{where}{name} is not a non-empty string")
    return value


def _int(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"claim {name} is not a number")
    return int(value)


_OFFSET = re.compile(r"(Z|[+-]\d\d:\d\d)$")


def _datetime(vc: Mapping[str, Any], name: str) -> datetime:
    text = _str(vc, name, "vc.")
    if not _OFFSET.search(text):
        raise _malformed(f"vc.{name} is not an ISO date-time with an offset")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _malformed(f"vc.{name} is not an ISO date-time with an offset") from None
    return value.astimezone(UTC)


def _certificates(header: Mapping[str, Any]) -> tuple[x509.Certificate, ...]:
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or not x5c or len(x5c) > _MAX_X5C:
        raise _malformed(f"header x5c is not a list of 1 to {_MAX_X5C} certificates")
    certs = []
    for i, entry in enumerate(x5c):
        if not isinstance(entry, str):
            raise _malformed(f"header x5c[{i}] is not a string")
        try:  # RFC 7515 section 4.1.6: base64 (not base64url) DER
            der = base64.b64decode(entry, validate=True)
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise _malformed(f"header x5c[{i}] is not a base64 DER certificate") from None
    return tuple(certs)


def _mandator(mandate: Mapping[str, Any]) -> Mandator:
    m = _obj(mandate, "mandator", "mandate.")
    w = "mandator."
    return Mandator(
        organization=_str(m, "organization", w),
        organization_identifier=_str(m, "organizationIdentifier", w),
        common_name=_str(m, "commonName", w, required=False),
        country=_str(m, "country", w, required=False),
        email=_str(m, "email", w, required=False),
        serial_number=_str(m, "serialNumber", w, required=False),
    )


def _mandatee(mandate: Mapping[str, Any]) -> Mapping[str, str]:
    m = _obj(mandate, "mandatee", "mandate.")
    _str(m, "id", "mandatee.")
    return MappingProxyType({k: v for k, v in m.items() if isinstance(v, str)})


def _powers(mandate: Mapping[str, Any]) -> tuple[Power, ...]:
    raw = mandate.get("power")
    if not isinstance(raw, list):
        raise _malformed("mandate.power is not a list")
    powers = []
    for i, p in enumerate(raw):
        where = f"power[{i}]."
        if not isinstance(p, dict):
            raise _malformed(f"power[{i}] is not a JSON object")
        action = p.get("action")
        actions = [action] if isinstance(action, str) else action
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise _malformed(f"{where}action is neither a string nor a list of strings")
        powers.append(
            Power(
                type=_str(p, "type", where),
                domain=_str(p, "domain", where),
                function=_str(p, "function", where),
                action=tuple(actions),
            )
        )
    return tuple(powers)


def _window(claims: Mapping[str, Any], vc: Mapping[str, Any]) -> tuple[datetime, datetime]:
    start = _datetime(vc, "validFrom")
    end = _datetime(vc, "validUntil")
    nbf, exp = _int(claims, "nbf"), _int(claims, "exp")
    if nbf is not None:
        start = max(start, datetime.fromtimestamp(nbf, UTC))
    if exp is not None:
        end = min(end, datetime.fromtimestamp(exp, UTC))
    return start, end


def parse_credential(jwt: str) -> LearCredentialMachine:
    """Parse a LEARCredentialMachine JWT: structure only, no signature or time check.

    Strict JSON (no duplicate members, bounded size and depth). Raises :class:`CredentialError`
    with reason ``malformed`` or ``not_lear_machine``.
    """
    if not isinstance(jwt, str):
        raise _malformed("not text")
    jwt = jwt.strip()
    try:
        check_compact_size(jwt, MAX_JWT_BYTES)
        parts = jwt.split(".")
        if len(parts) != 3:
            raise _malformed("not a compact JWS (three dot-separated parts)")
        header = decode_json_segment(parts[0])
        claims = decode_json_segment(parts[1])
        b64url_decode_strict(parts[2])
    except strict_json.InvalidJson as exc:
        raise _malformed(f"{exc} ({exc.reason})") from None
    except ValueError as exc:
        raise _malformed(str(exc)) from None
    if header.get("alg") != "RS256":
        raise _malformed("header alg is not RS256")
    certificates = _certificates(header)
    vc = _obj(claims, "vc", "claim ")
    context = vc.get("@context")
    if not isinstance(context, list) or not all(isinstance(c, str) for c in context):
        raise _malformed("vc.@context is not an array of strings")
    types = vc.get("type")
    if not isinstance(types, list) or LEAR_CREDENTIAL_MACHINE not in types:
        shown = [t for t in types if isinstance(t, str)][:4] if isinstance(types, list) else types
        raise CredentialError(
            f"the credential is not a {LEAR_CREDENTIAL_MACHINE} (vc.type is {shown!r})",
            reason="not_lear_machine",
        )
    issuer = _str(claims, "iss", "claim ")
    vc_issuer = vc.get("issuer")
    vc_issuer_id = vc_issuer.get("id") if isinstance(vc_issuer, dict) else vc_issuer
    if vc_issuer_id is not None and vc_issuer_id != issuer:
        raise CredentialError(
            f"vc.issuer {vc_issuer_id!r} differs from the iss claim {issuer!r}",
            reason="issuer_mismatch",
        )
    subject = _obj(vc, "credentialSubject", "vc.")
    mandate = _obj(subject, "mandate", "credentialSubject.")
    mandatee = _mandatee(mandate)
    binding = subject.get("id") or claims.get("sub") or mandatee["id"]
    if not isinstance(binding, str):
        raise _malformed("the subject (credentialSubject.id / sub) is not a string")
    valid_from, valid_until = _window(claims, vc)
    credential_id = vc.get("id") or claims.get("jti")
    if not isinstance(credential_id, str) or not credential_id:
        raise _malformed("neither vc.id nor jti names the credential")
    return LearCredentialMachine(
        jwt=jwt,
        subject_did=binding,
        issuer=issuer,
        valid_from=valid_from,
        valid_until=valid_until,
        mandator=_mandator(mandate),
        mandatee=mandatee,
        powers=_powers(mandate),
        credential_id=credential_id,
        sha256=hashlib.sha256(jwt.encode("ascii")).hexdigest(),
        certificates=certificates,
    )
