"""The rules serve applies to its TLS material: the client-CA bundle holds CA certificates only,
the server certificate matches its key (TEST-CATALOGUE E02, E09).

Pure X.509 (cryptography only, no grpc): the listener (:mod:`broker.server.tls`) enforces these
rules and ``broker doctor`` (:mod:`broker.doctor.tls`) reports on them, from one definition.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from broker.errors import ConfigError


def is_ca(cert: x509.Certificate) -> bool:
    """The certificate says it is a CA (basicConstraints cA:true); no extension: not a CA."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def first_non_ca(certs: Iterable[x509.Certificate]) -> x509.Certificate | None:
    """The first certificate of a client-CA bundle that is not a CA, or None."""
    return next((cert for cert in certs if not is_ca(cert)), None)


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """The certificate's public key is the private key's (compared as SubjectPublicKeyInfo)."""
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def check_client_ca_bundle(client_ca_pem: bytes) -> list[x509.Certificate]:
    """The bundle must hold at least one CA certificate and nothing else (E02). A
    :class:`ConfigError` (not retryable: the file must be fixed) otherwise."""
    try:
        certs = x509.load_pem_x509_certificates(client_ca_pem)
    except ValueError as exc:
        raise ConfigError("client CA bundle is not PEM certificates") from exc
    if first_non_ca(certs) is not None:
        raise ConfigError("client CA bundle holds a certificate that is not a CA")
    return certs


def check_server_pair(cert_pem: bytes, key_pem: bytes) -> None:
    """The server certificate chain parses and its first certificate matches the key."""
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, IndexError) as exc:
        raise ConfigError("server certificate or key is not valid PEM") from exc
    if not key_matches(leaf, key):
        raise ConfigError("server certificate does not match the server key")
