"""The caller's identity, taken from its verified mTLS client certificate.

gRPC has already validated the certificate chain against the client-CA bundle (expiry included)
before a handler runs; this module only names the caller: the URI SAN (``spiffe://...``) when
the certificate has exactly one, else the subject CN (SPIFFE X509-SVID section 2). The serial
number is kept for the denylist (TEST-CATALOGUE E04).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from broker.errors import PermissionDenied

SAN_KEY = "x509_subject_alternative_name"
CN_KEY = "x509_common_name"
PEM_KEY = "x509_pem_cert"


@dataclass(frozen=True)
class CallerIdentity:
    """Who is calling: ``name`` is a URI SAN or a CN; ``serial`` the certificate serial."""

    name: str
    source: Literal["uri_san", "cn"]
    serial: int | None = None


def _strings(values: Iterable[bytes] | None) -> list[str]:
    return [v.decode("utf-8", "replace") for v in values or ()]


def identity_from_auth_context(auth: Mapping[str, Iterable[bytes]]) -> CallerIdentity:
    """Name the caller from a gRPC ``auth_context()``.

    Raises :class:`PermissionDenied` when the peer has no usable identity (no client
    certificate, several URI SANs, neither URI SAN nor CN).
    """
    pem = _strings(auth.get(PEM_KEY))
    serial = _serial(pem[0]) if pem else None
    uris = [s for s in _strings(auth.get(SAN_KEY)) if "://" in s]
    if len(uris) > 1:
        raise PermissionDenied("client certificate has several URI SANs")
    if uris:
        return CallerIdentity(uris[0], "uri_san", serial)
    cns = [c for c in _strings(auth.get(CN_KEY)) if c]
    if len(cns) == 1:
        return CallerIdentity(cns[0], "cn", serial)
    raise PermissionDenied("client certificate names no identity")


@functools.lru_cache(maxsize=1024)
def _serial(pem: str) -> int | None:
    """The serial of a PEM certificate (cached: callers reuse one certificate per channel)."""
    try:
        return x509.load_pem_x509_certificate(pem.encode()).serial_number
    except ValueError:
        return None
