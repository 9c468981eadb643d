"""The caller's identity, read from its verified mTLS client certificate.

gRPC has already validated the certificate chain against the client-CA bundle (expiry included)
before a handler runs. This module parses the leaf itself with ``cryptography`` from the auth
context's PEM entry (grpc's pre-parsed SAN and CN strings mix DNS and URI names and are not
used) and names the caller, refusing with :class:`broker.errors.MalformedIdentity` before any
policy lookup (SPIFFE X509-SVID sections 2, 4.1, 4.3, 5.2):

* a leaf that is a CA (basicConstraints ``cA:true``) or may sign certificates or CRLs
  (keyUsage ``keyCertSign`` / ``cRLSign``) is refused;
* the identity is the leaf's one and only URI SAN, which must be a workload SPIFFE ID
  (:mod:`broker.server.spiffe_id`); several URI SANs, or one that is not a valid SPIFFE ID, are
  refused;
* without a URI SAN the certificate names no identity, unless the operator opted in to CN
  identities (``[grpc] cn_identities``, for non-SPIFFE PKIs): then its single subject CN names
  ``cn:<CN>``, a namespace no SPIFFE ID can enter. DNS SANs are never identities.

The outcome (identity or refusal) is cached per certificate, so the hot path does not re-parse
it. Refusals are logged with reason ``malformed_identity`` and a short detail, never the
certificate. The serial number is kept for the policy's serial denylist.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.x509.oid import NameOID

from broker.errors import MalformedIdentity
from broker.server import spiffe_id

PEM_KEY = "x509_pem_cert"

log = logging.getLogger("broker.server.identity")

_CACHE_SIZE = 1024
_HINT_CHARS = 128
_E = TypeVar("_E", bound=x509.ExtensionType)


@dataclass(frozen=True)
class CallerIdentity:
    """Who is calling: ``name`` is a workload SPIFFE ID (``source="uri_san"``) or
    ``cn:<CN>`` (``source="cn"``); ``serial`` the certificate serial."""

    name: str
    source: Literal["uri_san", "cn"]
    serial: int | None = None


@dataclass(frozen=True)
class _Refusal:
    detail: str
    serial: int | None = None
    offered: str | None = None  # the URI SAN or CN that was refused, for the log only


def identity_from_auth_context(
    auth: Mapping[str, Iterable[bytes]], *, cn_identities: bool = False
) -> CallerIdentity:
    """Name the caller from a gRPC ``auth_context()``.

    Raises :class:`MalformedIdentity` (not retryable) when the peer presents no certificate,
    a CA certificate, or no single well-formed identity; logs the refusal.
    """
    pems = list(auth.get(PEM_KEY) or ())
    if len(pems) == 1:
        outcome = read_certificate(pems[0], cn_identities)
    else:
        outcome = _Refusal("no single client certificate in the auth context")
    if isinstance(outcome, CallerIdentity):
        return outcome
    log.warning(
        "permission denied: reason=malformed_identity detail=%s offered=%r serial=%s",
        outcome.detail,
        outcome.offered,
        hex(outcome.serial) if outcome.serial is not None else None,
    )
    raise MalformedIdentity(outcome.detail)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def read_certificate(pem: bytes, cn_identities: bool) -> CallerIdentity | _Refusal:
    """The identity a PEM leaf certificate names, or why it names none (cached per PEM)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return _Refusal("client certificate does not parse")
    serial = cert.serial_number
    try:
        return _name(cert, serial, cn_identities)
    except MalformedIdentity as exc:
        return _Refusal(exc.message, serial)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return _Refusal("client certificate extensions do not parse", serial)


def _name(cert: x509.Certificate, serial: int, cn_identities: bool) -> CallerIdentity | _Refusal:
    exts = cert.extensions
    constraints = _ext(exts, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        return _Refusal("client certificate is a CA (cA:true)", serial)
    usage = _ext(exts, x509.KeyUsage)
    if usage is not None and (usage.key_cert_sign or usage.crl_sign):
        return _Refusal("client certificate may sign certificates or CRLs", serial)
    san = _ext(exts, x509.SubjectAlternativeName)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san is not None else []
    if len(uris) > 1:
        return _Refusal("client certificate has several URI SANs", serial)
    if uris:
        offered = uris[0][:_HINT_CHARS]
        try:
            return CallerIdentity(str(spiffe_id.parse_workload(uris[0])), "uri_san", serial)
        except MalformedIdentity as exc:
            return _Refusal(exc.message, serial, offered)
    if not cn_identities:
        return _Refusal("client certificate has no URI SAN (CN identities are off)", serial)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not isinstance(cns[0].value, str):
        return _Refusal("client certificate has no URI SAN and not exactly one CN", serial)
    common_name = cns[0].value
    try:
        return CallerIdentity(spiffe_id.cn_identity(common_name), "cn", serial)
    except MalformedIdentity as exc:
        return _Refusal(exc.message, serial, common_name[:_HINT_CHARS])


def _ext(exts: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return exts.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
