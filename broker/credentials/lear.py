"""The LEARCredentialMachine (DOME): a W3C VC in JWT form bound to the broker's did:key.

Skeleton: the API other modules build on. Filled in by the next commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509

from broker.errors import CredentialError

LEAR_CREDENTIAL_MACHINE = "LEARCredentialMachine"


@dataclass(frozen=True)
class Mandator:
    """The organisation that gave the mandate (``credentialSubject.mandate.mandator``)."""

    organization: str
    organization_identifier: str
    common_name: str
    country: str
    email: str
    serial_number: str


@dataclass(frozen=True)
class Power:
    """One power of the mandate (``power[]``): ``action`` is a tuple even when one string."""

    type: str
    domain: str
    function: str
    action: tuple[str, ...]


@dataclass(frozen=True)
class LearCredentialMachine:
    """A parsed LEARCredentialMachine. ``jwt`` is the compact JWS as received (put it in the VP
    as is); ``subject_did`` is the binding value the Verifier compares with the VP holder."""

    jwt: str = field(repr=False)
    subject_did: str
    issuer: str
    valid_from: datetime
    valid_until: datetime
    mandator: Mandator = field(repr=False)
    mandatee: dict[str, str] = field(repr=False, hash=False)
    powers: tuple[Power, ...] = field(repr=False)
    credential_id: str
    sha256: str


def parse_credential(jwt: str) -> LearCredentialMachine:
    """Parse the structure only (strict JSON; no signature or time check)."""
    raise CredentialError("not implemented yet", reason="malformed")


def verify_credential(
    cred: LearCredentialMachine,
    *,
    did: str,
    now: datetime,
    ca_bundle: list[x509.Certificate] | None = None,
) -> None:
    """Binding to ``did``, validity window at ``now``, RS256 signature by the x5c certificate,
    its organizationIdentifier against the did:elsi: issuer, and the chain when ``ca_bundle``."""
    raise CredentialError("not implemented yet", reason="bad_signature")


def _unused(_: Any) -> None:  # pragma: no cover
    pass
