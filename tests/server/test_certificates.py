"""The rules for serve's TLS material (broker.server.certificates, TEST-CATALOGUE E02, E09): serve
and ``broker doctor`` give every bundle and every certificate/key pair the same verdict."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.doctor.result import Status
from broker.doctor.tls import check_ca_bundle, check_pair
from broker.errors import ConfigError
from broker.server.certificates import (
    check_client_ca_bundle,
    check_server_pair,
    first_non_ca,
    is_ca,
)
from tests.clock import FakeClock
from tests.server.pki import NOW, Ca

WARN_DAYS = 0.5  # generated CAs are valid for 30 days, leaves for 1: no expiry warning at NOW


def without_basic_constraints(name: str) -> bytes:
    """A self-signed certificate with no basicConstraints extension: not a CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def bundles() -> list[tuple[str, bytes, str | None]]:
    """(id, bundle, subject of the first non-CA certificate or None when serve accepts it)."""
    one, two = Ca("ca-one"), Ca("ca-two")
    return [
        ("one-ca", one.pem, None),
        ("two-cas", one.pem + two.pem, None),
        ("ca-then-leaf", one.pem + one.issue(cn="leaf").cert_pem, "CN=leaf"),
        ("leaf-only", one.issue(cn="lone").cert_pem, "CN=lone"),
        ("intermediate-flag", one.issue(cn="sub", is_ca=True).cert_pem, None),
        ("no-basic-constraints", one.pem + without_basic_constraints("bare"), "CN=bare"),
    ]


@pytest.mark.parametrize(
    ("bundle", "not_ca"), [b[1:] for b in bundles()], ids=[b[0] for b in bundles()]
)
def test_e02_serve_and_doctor_judge_a_client_ca_bundle_alike(
    tmp_path: Path, bundle: bytes, not_ca: str | None
) -> None:
    path = tmp_path / "clients.pem"
    path.write_bytes(bundle)
    doctor = check_ca_bundle("tls.grpc_client_ca", path, FakeClock(NOW.timestamp()), WARN_DAYS)
    certs = x509.load_pem_x509_certificates(bundle)
    if not_ca is None:
        assert check_client_ca_bundle(bundle) == certs
        assert first_non_ca(certs) is None
        assert doctor.status is Status.OK, doctor.detail
    else:
        with pytest.raises(ConfigError, match="holds a certificate that is not a CA") as caught:
            check_client_ca_bundle(bundle)
        assert caught.value.retryable is False
        found = first_non_ca(certs)
        assert found is not None and found.subject.rfc4514_string() == not_ca
        assert doctor.status is Status.FAIL
        assert doctor.detail == f"{path}: {not_ca} is not a CA certificate"


@pytest.mark.parametrize("junk", [b"", b"not a certificate", Ca("k").issue().key_pem])
def test_e02_a_bundle_without_pem_certificates_is_refused_by_both(
    tmp_path: Path, junk: bytes
) -> None:
    path = tmp_path / "clients.pem"
    path.write_bytes(junk)
    with pytest.raises(ConfigError, match="not PEM certificates"):
        check_client_ca_bundle(junk)
    doctor = check_ca_bundle("tls.grpc_client_ca", path, FakeClock(NOW.timestamp()), WARN_DAYS)
    assert doctor.status is Status.FAIL
    assert doctor.detail == f"{path} holds no PEM certificate"


def test_is_ca_reads_basic_constraints_only() -> None:
    ca = Ca("root")
    assert is_ca(ca.cert)
    assert not is_ca(x509.load_pem_x509_certificate(ca.issue(cn="leaf").cert_pem))
    assert not is_ca(x509.load_pem_x509_certificate(without_basic_constraints("bare")))


def test_e09_serve_and_doctor_judge_a_certificate_and_key_pair_alike(tmp_path: Path) -> None:
    ca = Ca("servers")
    server, other = ca.issue(cn="broker.test", server=True), ca.issue(cn="other", server=True)
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(server.cert_pem + ca.pem)  # a chain: the leaf first
    clock = FakeClock(NOW.timestamp())

    key_path.write_bytes(server.key_pem)
    check_server_pair(cert_path.read_bytes(), server.key_pem)
    assert check_pair("tls.grpc_server", cert_path, key_path, clock, WARN_DAYS).status is Status.OK

    key_path.write_bytes(other.key_pem)
    with pytest.raises(ConfigError, match="does not match the server key"):
        check_server_pair(cert_path.read_bytes(), other.key_pem)
    mismatch = check_pair("tls.grpc_server", cert_path, key_path, clock, WARN_DAYS)
    assert mismatch.status is Status.FAIL
    assert "does not match" in mismatch.detail
