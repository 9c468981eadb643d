"""Network failures in doctor reports: the request that failed and why, in words.

``GET https://verifier.example/.well-known/openid-configuration: connection refused
[as_unavailable]``: an operator sees which URL the broker tried (scheme, host, port and path;
never a query or user info: :func:`broker.oauth.http.url_full_of`) and the cause found in the
exception chain (refused, name not resolved, TLS verification, timeout), instead of the bare
transport class name the runtime logs carry.
"""

from __future__ import annotations

import os
import socket
import ssl

import httpx

from broker.doctor.result import CheckResult, fail, failed
from broker.errors import AuthServerUnavailable, BrokerError
from broker.oauth.http import url_full_of

_CHAIN_LIMIT = 10


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(out) < _CHAIN_LIMIT and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def cause_in_words(exc: BaseException) -> str | None:
    """What went wrong on the wire, from the deepest informative exception in the chain;
    None when the chain holds no transport cause (then the broker message says it)."""
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, ssl.SSLCertVerificationError):
            detail = link.verify_message or "certificate verify failed"
            return f"TLS certificate verification failed ({detail}; see [oauth].ca_file)"
    for link in chain:
        if isinstance(link, ssl.SSLError):
            return f"TLS handshake failed ({link.reason or type(link).__name__})"
        if isinstance(link, socket.gaierror):
            return "host name not resolved"
        if isinstance(link, TimeoutError | httpx.TimeoutException):
            return "no answer in time ([oauth].http_timeout)"
    for link in chain:
        if isinstance(link, OSError) and isinstance(link.errno, int) and link.errno > 0:
            return os.strerror(link.errno).lower()
    return None


def network_failed(name: str, exc: BaseException, method: str, url: str) -> CheckResult:
    """A failed check for a request to ``url``: ``<METHOD> <url>: <cause> [<reason>]``."""
    shown = url_full_of(url) or url
    words = cause_in_words(exc) if isinstance(exc, AuthServerUnavailable) else None
    if words is not None and isinstance(exc, BrokerError):
        return fail(name, f"{method} {shown}: {words} [{exc.reason}]")
    return failed(name, exc, f"{method} {shown}")
