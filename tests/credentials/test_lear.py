"""LEARCredentialMachine parsing and verification against credentials a test issuer really signs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.credentials.lear import (
    LearCredentialMachine,
    Mandator,
    Power,
    parse_credential,
)
from broker.credentials.verify import verify_credential
from broker.errors import CredentialError
from broker.keys.didkey import did_from_public_key
from tests.credentials.issuer import TestCa, TestIssuer, tamper_payload

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def new_did() -> str:
    return did_from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer.self_signed()


@pytest.fixture(scope="module")
def did() -> str:
    return new_did()


def reason(exc: pytest.ExceptionInfo[CredentialError]) -> str:
    return exc.value.reason


def test_a_valid_credential_parses_and_verifies(issuer: TestIssuer, did: str) -> None:
    jwt = issuer.issue(did, now=NOW)
    cred = parse_credential(jwt)
    verify_credential(cred, did=did, now=NOW)
    assert cred.subject_did == did
    assert cred.issuer == issuer.did
    assert cred.valid_until == NOW + timedelta(days=365)
    assert cred.valid_from == NOW - timedelta(days=1)
    assert cred.mandator == Mandator(
        "Example Org SL", "VATES-A11111111", "Jane Operator", "ES", "jane@example.org",
        "IDCES-12345678Z",
    )  # fmt: skip
    assert cred.mandatee["id"] == did and cred.mandatee["domain"] == "broker.example.org"
    assert cred.powers[1] == Power("domain", "DOME", "ProductOffering", ("create", "update"))
    assert cred.credential_id.startswith("urn:uuid:")
    assert len(cred.sha256) == 64
    assert jwt not in repr(cred) and len(repr(cred)) < 600
    assert isinstance(cred, LearCredentialMachine) and cred == parse_credential(jwt + "\n")


def test_binding_prefers_credential_subject_id(issuer: TestIssuer, did: str) -> None:
    other = new_did()
    cred = parse_credential(issuer.issue(did, now=NOW, subject_id=other))
    assert cred.subject_did == other


def test_binding_falls_back_to_mandatee_id(issuer: TestIssuer, did: str) -> None:
    def drop_sub(claims: dict[str, Any]) -> None:
        del claims["sub"]

    cred = parse_credential(issuer.issue(did, now=NOW, change=drop_sub))
    assert cred.subject_did == did
    verify_credential(cred, did=did, now=NOW)


def test_wrong_binding_is_refused_naming_both_dids(issuer: TestIssuer, did: str) -> None:
    other = new_did()
    cred = parse_credential(issuer.issue(other, now=NOW))
    with pytest.raises(CredentialError) as exc:
        verify_credential(cred, did=did, now=NOW)
    assert reason(exc) == "not_bound"
    assert other in str(exc.value) and did in str(exc.value)
    assert exc.value.retryable is False


def test_expired_and_not_yet_valid(issuer: TestIssuer, did: str) -> None:
    cred = parse_credential(issuer.issue(did, now=NOW, valid_for=timedelta(days=30)))
    verify_credential(cred, did=did, now=NOW + timedelta(days=29))
    with pytest.raises(CredentialError) as exc:
        verify_credential(cred, did=did, now=NOW + timedelta(days=30))
    assert reason(exc) == "expired"
    with pytest.raises(CredentialError) as exc:
        verify_credential(cred, did=did, now=NOW - timedelta(days=2))
    assert reason(exc) == "not_yet_valid"


def test_the_window_is_the_narrower_of_valid_from_until_and_nbf_exp(
    issuer: TestIssuer, did: str
) -> None:
    def short_exp(claims: dict[str, Any]) -> None:
        claims["exp"] = int((NOW + timedelta(hours=1)).timestamp())

    cred = parse_credential(issuer.issue(did, now=NOW, change=short_exp))
    assert cred.valid_until == NOW + timedelta(hours=1)
    with pytest.raises(CredentialError) as exc:
        verify_credential(cred, did=did, now=NOW + timedelta(hours=2))
    assert reason(exc) == "expired"


def test_tampered_payload_fails_the_signature(issuer: TestIssuer, did: str) -> None:
    def extend(claims: dict[str, Any]) -> None:
        claims["vc"]["credentialSubject"]["mandate"]["power"][0]["action"] = ["*"]

    jwt = tamper_payload(issuer.issue(did, now=NOW), extend)
    cred = parse_credential(jwt)
    with pytest.raises(CredentialError) as exc:
        verify_credential(cred, did=did, now=NOW)
    assert reason(exc) == "bad_signature"


def test_signature_by_another_key_than_the_x5c_certificate(did: str) -> None:
    a = TestIssuer.self_signed(key_index=0)
    b = TestIssuer.self_signed(key_index=2)
    jwt = a.issue(did, now=NOW)
    head, payload, _ = jwt.split(".")
    forged = b.sign_raw(b"x")  # a signature by b's key over something else
    cred = parse_credential(f"{head}.{payload}.{forged.split('.')[2]}")
    with pytest.raises(CredentialError) as exc:
        verify_credential(cred, did=did, now=NOW)
    assert reason(exc) == "bad_signature"


def test_certificate_of_another_organization_is_refused(did: str) -> None:
    issuer = TestIssuer.self_signed(cert_org_id="VATES-Z99999999")
    cred = parse_credential(issuer.issue(did, now=NOW))
    with pytest.raises(CredentialError) as exc:
        verify_credential(cred, did=did, now=NOW)
    assert reason(exc) == "issuer_mismatch"
    assert "VATES-Z99999999" in str(exc.value) and issuer.did in str(exc.value)


def test_an_issuer_that_is_not_did_elsi_is_refused(issuer: TestIssuer, did: str) -> None:
    def web_issuer(claims: dict[str, Any]) -> None:
        claims["iss"] = claims["vc"]["issuer"]["id"] = "did:web:issuer.example"

    cred = parse_credential(issuer.issue(did, now=NOW, change=web_issuer))
    with pytest.raises(CredentialError) as exc:
        verify_credential(cred, did=did, now=NOW)
    assert reason(exc) == "issuer_mismatch"


def test_vc_issuer_differing_from_iss_is_refused(issuer: TestIssuer, did: str) -> None:
    def other(claims: dict[str, Any]) -> None:
        claims["vc"]["issuer"]["id"] = "did:elsi:VATES-OTHER"

    with pytest.raises(CredentialError) as exc:
        parse_credential(issuer.issue(did, now=NOW, change=other))
    assert reason(exc) == "issuer_mismatch"


def test_not_a_lear_credential_machine(issuer: TestIssuer, did: str) -> None:
    jwt = issuer.issue(did, now=NOW, types=["VerifiableCredential", "LEARCredentialEmployee"])
    with pytest.raises(CredentialError) as exc:
        parse_credential(jwt)
    assert reason(exc) == "not_lear_machine"
    assert "LEARCredentialEmployee" in str(exc.value)


def test_duplicate_claims_are_refused(issuer: TestIssuer, did: str) -> None:
    claims = json.dumps(issuer.claims(did, now=NOW))
    doubled = claims[:-1] + ', "sub": "did:key:zEvil"}'
    with pytest.raises(CredentialError) as exc:
        parse_credential(issuer.sign_raw(doubled.encode()))
    assert reason(exc) == "malformed"
    assert "duplicate" in str(exc.value)


def test_oversize_credential_is_refused_before_parsing(issuer: TestIssuer, did: str) -> None:
    def pad(claims: dict[str, Any]) -> None:
        claims["vc"]["padding"] = "x" * 70_000

    with pytest.raises(CredentialError) as exc:
        parse_credential(issuer.issue(did, now=NOW, change=pad))
    assert reason(exc) == "malformed"
    assert "too_large" in str(exc.value)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("alg", "ES256"),
        ("x5c", []),
        ("x5c", ["not base64 !"]),
        ("@context", "https://www.w3.org/ns/credentials/v2"),
        ("validUntil", "2027-01-01T00:00:00"),  # no offset
        ("mandatee", None),
    ],
)
def test_malformed_shapes(issuer: TestIssuer, did: str, where: str, value: object) -> None:
    claims = issuer.claims(did, now=NOW)
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT", "x5c": issuer.x5c()}
    if where in header:
        header[where] = value
    elif where == "mandatee":
        del claims["vc"]["credentialSubject"]["mandate"]["mandatee"]
    else:
        claims["vc"][where] = value
    with pytest.raises(CredentialError) as exc:
        parse_credential(issuer.sign_raw(json.dumps(claims).encode(), header))
    assert reason(exc) == "malformed"


def test_ca_bundle_accepts_the_issuing_ca_and_refuses_another(did: str) -> None:
    ca = TestCa.make()
    stranger = TestCa.make("Another Root CA", key_index=11)
    issuer = TestIssuer.from_ca(ca)
    cred = parse_credential(issuer.issue(did, now=NOW))
    verify_credential(cred, did=did, now=NOW, ca_bundle=[ca.cert])
    verify_credential(cred, did=did, now=NOW, ca_bundle=[stranger.cert, ca.cert])
    with pytest.raises(CredentialError) as exc:
        verify_credential(cred, did=did, now=NOW, ca_bundle=[stranger.cert])
    assert reason(exc) == "untrusted_chain"


def test_a_self_signed_issuer_certificate_is_not_in_a_ca_bundle(
    issuer: TestIssuer, did: str
) -> None:
    cred = parse_credential(issuer.issue(did, now=NOW))
    with pytest.raises(CredentialError) as exc:
        verify_credential(cred, did=did, now=NOW, ca_bundle=[TestCa.make().cert])
    assert reason(exc) == "untrusted_chain"
