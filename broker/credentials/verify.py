"""Verifying a LEARCredentialMachine locally, before the Verifier sees it.

:func:`verify_credential` checks what the Verifier would check and can be checked here, so that
an operator gets a reason instead of the Verifier's bare 403 (the list is in
:mod:`broker.credentials.lear`, which parses the credential): the RS256 signature by the key of
``x5c[0]``, that certificate's organizationIdentifier against the ``did:elsi:`` issuer,
optionally the chain to the operator's CAs, the binding to the broker's did:key, the validity
window.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from broker.credentials.lear import LearCredentialMachine
from broker.errors import CredentialError
from broker.jose import b64url_decode_strict

ELSI_PREFIX = "did:elsi:"
MIN_RSA_BITS = 2048


def organization_identifier(cert: x509.Certificate) -> str | None:
    """The subject's organizationIdentifier (OID 2.5.4.97), ``None`` when absent."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _verify_signature(cred: LearCredentialMachine) -> None:
    key = cred.signer_certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CredentialError(
            "the x5c certificate does not hold an RSA key (RS256)", reason="bad_signature"
        )
    if key.key_size < MIN_RSA_BITS:
        raise CredentialError(
            f"the x5c certificate's RSA key has {key.key_size} bits (< {MIN_RSA_BITS})",
            reason="bad_signature",
        )
    head, payload, sig = cred.jwt.split(".")
    try:
        key.verify(
            b64url_decode_strict(sig),
            f"{head}.{payload}".encode("ascii"),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        raise CredentialError(
            "the credential's RS256 signature does not verify with its x5c certificate "
            "(altered, or signed by another key)",
            reason="bad_signature",
        ) from None


def _verify_issuer(cred: LearCredentialMachine) -> None:
    if not cred.issuer.startswith(ELSI_PREFIX) or len(cred.issuer) == len(ELSI_PREFIX):
        raise CredentialError(
            f"the issuer {cred.issuer!r} is not a did:elsi: DID", reason="issuer_mismatch"
        )
    org_id = organization_identifier(cred.signer_certificate)
    expected = cred.issuer[len(ELSI_PREFIX) :]
    if org_id != expected:
        raise CredentialError(
            f"the x5c certificate's organizationIdentifier is {org_id!r}, the issuer "
            f"{cred.issuer} needs {expected!r}",
            reason="issuer_mismatch",
        )


def _verify_chain(
    cred: LearCredentialMachine, ca_bundle: list[x509.Certificate], now: datetime
) -> None:
    # Imported here: only a --ca-bundle needs it.
    from cryptography.x509 import verification as v  # noqa: PLC0415

    if not ca_bundle:
        raise CredentialError("the CA bundle holds no certificate", reason="untrusted_chain")
    builder = (
        v.PolicyBuilder()
        .store(v.Store(ca_bundle))
        .time(now)
        # A signing certificate, not a TLS client: any key usage and EKU, no SAN required;
        # the CA certificates keep the WebPKI rules (basicConstraints CA, keyCertSign).
        .extension_policies(
            ca_policy=v.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=v.ExtensionPolicy.permit_all(),
        )
    )
    try:
        builder.build_client_verifier().verify(cred.signer_certificate, list(cred.certificates[1:]))
    except v.VerificationError as exc:
        raise CredentialError(
            f"the x5c certificate does not chain to a CA of the bundle: {exc}",
            reason="untrusted_chain",
        ) from None


def verify_credential(
    cred: LearCredentialMachine,
    *,
    did: str,
    now: datetime,
    ca_bundle: list[x509.Certificate] | None = None,
) -> None:
    """Check ``cred`` for use by the key ``did`` at ``now`` (an aware datetime).

    In order: the RS256 signature by ``x5c[0]``, that certificate's organizationIdentifier
    against the ``did:elsi:`` issuer, the chain to ``ca_bundle`` when given, the binding to
    ``did``, the validity window. Raises :class:`CredentialError` (not retryable) with reason
    ``bad_signature``, ``issuer_mismatch``, ``untrusted_chain``, ``not_bound``,
    ``not_yet_valid`` or ``expired``.
    """
    _verify_signature(cred)
    _verify_issuer(cred)
    if ca_bundle is not None:
        _verify_chain(cred, ca_bundle, now)
    if cred.subject_did != did:
        raise CredentialError(
            f"the credential is bound to {cred.subject_did}, not to this key's {did}",
            reason="not_bound",
        )
    if now < cred.valid_from:
        raise CredentialError(
            f"the credential is not valid before {cred.valid_from.isoformat()}",
            reason="not_yet_valid",
        )
    if now >= cred.valid_until:
        raise CredentialError(
            f"the credential expired at {cred.valid_until.isoformat()}", reason="expired"
        )
