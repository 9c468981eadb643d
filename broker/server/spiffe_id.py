"""The SPIFFE ID grammar (SPIFFE-ID spec section 2; X509-SVID spec section 3.1, 5.2).

``spiffe://<trust domain><path>``, compared as exact strings, so the grammar admits one
spelling per identity:

* the scheme is ``spiffe``, lower case; no userinfo, port, query or fragment;
* the trust domain is 1-255 characters of ``[a-z0-9._-]`` (no upper case, no percent-encoding);
* the path is empty or ``/``-separated segments of ``[A-Za-z0-9._-]``: no empty, ``.`` or ``..``
  segment, no trailing ``/``, no percent-encoding; case-sensitive;
* the whole URI is at most 2048 bytes.

A caller (a leaf certificate) needs a *workload* ID: one with a non-root path
(X509-SVID section 3.1). Identities of non-SPIFFE PKIs, read from the certificate's subject CN
only when the operator opts in, live in their own namespace ``cn:<CN>`` (:func:`cn_identity`),
so a CN can never equal a SPIFFE ID.

The same functions check the policy file and the peer certificate. Errors are
:class:`broker.errors.MalformedIdentity` whose message is a short reason; it never repeats the
input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from broker.errors import MalformedIdentity

SCHEME_PREFIX = "spiffe://"
CN_PREFIX = "cn:"
MAX_URI_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255
MAX_CN_CHARS = 64  # RFC 5280 ub-common-name

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# Printable ASCII, no leading/trailing space, no control characters.
_CN = re.compile(r"[!-~](?:[ -~]*[!-~])?")


@dataclass(frozen=True)
class SpiffeId:
    """A valid SPIFFE ID; ``path`` is empty or starts with ``/``."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"


def parse(text: str) -> SpiffeId:
    """Parse a SPIFFE ID (an empty path is allowed: the trust domain's own ID)."""
    if not text.isascii():
        raise MalformedIdentity("SPIFFE ID is not ASCII")
    if len(text) > MAX_URI_BYTES:
        raise MalformedIdentity(f"SPIFFE ID is longer than {MAX_URI_BYTES} bytes")
    if not text.startswith(SCHEME_PREFIX):
        raise MalformedIdentity("not a spiffe:// URI")
    rest = text[len(SCHEME_PREFIX) :]
    for char, what in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding")):
        if char in rest:
            raise MalformedIdentity(f"SPIFFE ID has {what}")
    trust_domain, slash, path = rest.partition("/")
    _check_trust_domain(trust_domain)
    if slash:
        _check_path(path)
    return SpiffeId(trust_domain, slash + path)


def parse_workload(text: str) -> SpiffeId:
    """Parse the SPIFFE ID of a workload (a leaf certificate): the path must not be empty."""
    spiffe_id = parse(text)
    if not spiffe_id.path:
        raise MalformedIdentity("SPIFFE ID names a trust domain, not a workload (empty path)")
    return spiffe_id


def cn_identity(common_name: str) -> str:
    """The policy name of a subject CN: ``cn:<CN>``, for a CN of 1-64 printable ASCII
    characters without leading or trailing space."""
    if len(common_name) > MAX_CN_CHARS:
        raise MalformedIdentity(f"CN is longer than {MAX_CN_CHARS} characters")
    if not _CN.fullmatch(common_name):
        raise MalformedIdentity("CN is empty or not printable ASCII")
    return CN_PREFIX + common_name


def check_policy_name(name: str) -> None:
    """A policy identity is a workload SPIFFE ID or ``cn:<CN>``; raise MalformedIdentity."""
    if name.startswith(CN_PREFIX):
        cn_identity(name[len(CN_PREFIX) :])
    else:
        parse_workload(name)


def _check_trust_domain(trust_domain: str) -> None:
    if not trust_domain:
        raise MalformedIdentity("SPIFFE ID has an empty trust domain")
    if len(trust_domain) > MAX_TRUST_DOMAIN_BYTES:
        raise MalformedIdentity(f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    if "@" in trust_domain:
        raise MalformedIdentity("SPIFFE ID has userinfo")
    if ":" in trust_domain:
        raise MalformedIdentity("SPIFFE ID has a port")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise MalformedIdentity("trust domain has characters other than [a-z0-9._-]")


def _check_path(path: str) -> None:
    # ``path`` is what follows the first "/" after the trust domain.
    if not path:
        raise MalformedIdentity("SPIFFE ID path has a trailing slash")
    segments = path.split("/")
    if segments[-1] == "":
        raise MalformedIdentity("SPIFFE ID path has a trailing slash")
    for segment in segments:
        if segment == "":
            raise MalformedIdentity("SPIFFE ID path has an empty segment")
        if segment in (".", ".."):
            raise MalformedIdentity("SPIFFE ID path has a '.' or '..' segment")
        if not _SEGMENT.fullmatch(segment):
            raise MalformedIdentity("SPIFFE ID path has characters other than [A-Za-z0-9._-]")
