"""A test DOME Issuer: real LEARCredentialMachine JWTs (RS256, x5c), for any test that needs one.

    issuer = TestIssuer.self_signed()              # or TestIssuer.from_ca(ca) / TestCa()
    jwt = issuer.issue(did, now=clock_now)          # valid for 365 days from now - 1 day
    jwt = issuer.issue(did, now=..., valid_for=timedelta(days=29), types=[...], ...)

The JWT is signed with jwcrypto (not the code under test); :meth:`TestIssuer.sign_raw` signs an
arbitrary payload text (duplicate members, odd shapes) with cryptography directly. RSA keys are
made once per process (generation is slow on a busy machine).
"""

from __future__ import annotations

import base64
import functools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from jwcrypto import jwk, jws

DEFAULT_ORG_ID = "VATES-B60645900"
CONTEXT = [
    "https://www.w3.org/ns/credentials/v2",
    "https://credentials.eudistack.eu/.well-known/credentials/lear_credential_machine/w3c/v2",
]


@functools.cache
def rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    """The ``n``-th RSA-2048 test key of this process."""
    del n
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _name(org_id: str | None, cn: str) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "ES"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DOME Test Issuer"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ]
    if org_id is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, org_id))
    return x509.Name(attrs)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    return builder.not_valid_before(start).not_valid_after(start + timedelta(days=365 * 30))


@dataclass(frozen=True)
class TestCa:
    """A root CA for the chain checks (``--ca-bundle``)."""

    __test__ = False
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, name: str = "DOME Test Root CA", key_index: int = 10) -> TestCa:
        key = rsa_key(key_index)
        subject = _name(None, name)
        builder = _validity(x509.CertificateBuilder())
        cert = (
            builder.subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class TestIssuer:
    """Signs LEARCredentialMachine JWTs as ``did:elsi:<org_id>`` with ``cert`` in x5c."""

    __test__ = False
    org_id: str
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def did(self) -> str:
        return f"did:elsi:{self.org_id}"

    @classmethod
    def self_signed(
        cls, org_id: str = DEFAULT_ORG_ID, *, cert_org_id: str | None = None, key_index: int = 0
    ) -> TestIssuer:
        """``cert_org_id``: another organizationIdentifier in the certificate than the DID's."""
        key = rsa_key(key_index)
        subject = _name(cert_org_id or org_id, "DOME Test Issuer seal")
        cert = (
            _validity(x509.CertificateBuilder())
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .sign(key, hashes.SHA256())
        )
        return cls(org_id, key, cert)

    @classmethod
    def from_ca(cls, ca: TestCa, org_id: str = DEFAULT_ORG_ID, *, key_index: int = 1) -> TestIssuer:
        key = rsa_key(key_index)
        cert = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(org_id, "DOME Test Issuer seal"))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
            )
            .sign(ca.key, hashes.SHA256())
        )
        return cls(org_id, key, cert)

    def x5c(self) -> list[str]:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        return [base64.b64encode(der).decode("ascii")]

    def claims(
        self,
        did: str,
        *,
        now: datetime,
        valid_for: timedelta = timedelta(days=365),
        valid_from: datetime | None = None,
        types: list[str] | None = None,
        subject_id: str | None = None,
        credential_id: str | None = None,
    ) -> dict[str, Any]:
        """The claims of a credential for ``did`` valid from ``valid_from`` (default: a day
        before ``now``) until ``now + valid_for``. ``subject_id`` sets credentialSubject.id."""
        start = valid_from or now - timedelta(days=1)
        end = now + valid_for
        cred_id = credential_id or f"urn:uuid:{uuid.uuid4()}"
        subject: dict[str, Any] = {
            "mandate": {
                "mandatee": {"id": did, "domain": "broker.example.org", "ipAddress": "192.0.2.7"},
                "mandator": {
                    "id": "did:elsi:VATES-A11111111",
                    "commonName": "Jane Operator",
                    "country": "ES",
                    "email": "jane@example.org",
                    "organization": "Example Org SL",
                    "organizationIdentifier": "VATES-A11111111",
                    "serialNumber": "IDCES-12345678Z",
                },
                "power": [
                    {
                        "type": "domain",
                        "domain": "DOME",
                        "function": "Onboarding",
                        "action": ["execute"],
                    },
                    {
                        "type": "domain",
                        "domain": "DOME",
                        "function": "ProductOffering",
                        "action": ["create", "update"],
                    },
                ],
            }
        }
        if subject_id is not None:
            subject = {"id": subject_id, **subject}
        return {
            "iss": self.did,
            "sub": did,
            "jti": cred_id,
            "iat": int(now.timestamp()),
            "nbf": int(start.timestamp()),
            "exp": int(end.timestamp()),
            "vc": {
                "@context": CONTEXT,
                "id": cred_id,
                "type": types or ["VerifiableCredential", "LEARCredentialMachine"],
                "issuer": {
                    "id": self.did,
                    "organizationIdentifier": self.org_id,
                    "organization": "DOME Test Issuer",
                    "country": "ES",
                    "commonName": "DOME Test Issuer seal",
                    "serialNumber": "B60645900",
                },
                "credentialSubject": subject,
                "validFrom": start.astimezone(UTC).isoformat(),
                "validUntil": end.astimezone(UTC).isoformat(),
            },
        }

    def issue(
        self,
        did: str,
        *,
        now: datetime,
        change: Callable[[dict[str, Any]], None] | None = None,
        **options: Any,
    ) -> str:
        """A signed credential (jwcrypto, RS256, x5c). ``change`` edits the claims before
        signing; ``options`` go to :meth:`claims`."""
        claims = self.claims(did, now=now, **options)
        if change is not None:
            change(claims)
        key = jwk.JWK.from_pyca(self.key)
        token = jws.JWS(json.dumps(claims).encode("utf-8"))
        header = {"alg": "RS256", "typ": "JWT", "x5c": self.x5c()}
        token.add_signature(key, alg=None, protected=json.dumps(header))
        return str(token.serialize(compact=True))

    def sign_raw(self, payload: bytes, header: dict[str, Any] | None = None) -> str:
        """Sign any payload bytes (e.g. JSON with duplicate members) RS256 with x5c."""
        head = header or {"alg": "RS256", "typ": "JWT", "x5c": self.x5c()}
        signing_input = f"{_b64url(json.dumps(head).encode())}.{_b64url(payload)}"
        sig = self.key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"


def tamper_payload(jwt: str, change: Callable[[dict[str, Any]], None]) -> str:
    """The same header and signature over an edited payload."""
    head, payload, sig = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    change(claims)
    return f"{head}.{_b64url(json.dumps(claims).encode())}.{sig}"
