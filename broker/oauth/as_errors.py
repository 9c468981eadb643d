"""The one classification of authorization-server error responses (RFC 6749 section 5.2,
RFC 9126 section 2.3, RFC 7523 section 3.1) into the broker's exception tree.

Every non-success answer of the token and PAR endpoints goes through :func:`classify` (pure,
table-tested) via :func:`error_from_response` (reads the body, logs). Each class says whether
retrying can help:

======================================================  =====================================
answer                                                  error (retryable?)
======================================================  =====================================
429, any 5xx, ``temporarily_unavailable``,              AuthServerUnavailable (yes)
``server_error``
``invalid_client`` (any status) or a 401 without an     ClientAuthenticationFailed (no), or
OAuth error                                             ClockSkewSuspected (no) while the
                                                        clock skew monitor suspects skew
``invalid_grant``                                       InvalidGrant (no: the grant is dead)
another OAuth ``error``                                 OAuthErrorResponse (no)
token endpoint 400/403 without an OAuth error (DOME's   InvalidGrant (no)
dead code or refresh token)
the same for a ``client_credentials`` request (DOME's   MachineGrantRejected (no)
empty 403: VP, credential, issuer trust, revocation)
anything else                                           UnexpectedResponse (yes)
======================================================  =====================================

Every answer classified here is also told to an :class:`AsErrorObserver` when one is given
(the composition root connects ``broker.as.errors`` to it; oauth imports no metrics).

A client-authentication failure means an operator has to act, so it is logged at ERROR with
its likely cause (:func:`likely_cause`); ``broker doctor`` uses the same texts.
"""

from __future__ import annotations

import enum
import logging
from typing import Protocol

from broker.errors import (
    AuthServerUnavailable,
    ClientAuthenticationFailed,
    ClockSkewSuspected,
    InvalidGrant,
    MachineGrantRejected,
    OAuthClientError,
    OAuthErrorResponse,
    UnexpectedResponse,
)
from broker.oauth import http as bounded
from broker.oauth.skew import SkewMonitor

_log = logging.getLogger(__name__)

INVALID_CLIENT = "invalid_client"
# OAuth error codes that say "try again later" (RFC 6749 section 4.1.2.1; some servers send
# them from the token endpoint too).
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
# DOME answers a dead code or refresh token with an empty, non-OAuth 400 or 403 (DOME-PROFILE
# "Errors"). A bare 401 is a client-authentication failure, never a dead grant: burying every
# grant because our key is not (yet) registered would force every user to log in again.
_DEAD_GRANT_STATUSES = frozenset({400, 403})
CLIENT_CREDENTIALS = "client_credentials"


class Endpoint(enum.StrEnum):
    """Which endpoint answered: the token endpoint knows DOME's non-OAuth dead-grant answers.
    Discovery (``metadata``) and the JWKS are not classified here (a failure there is a
    :class:`broker.errors.DiscoveryError`), but their error answers are told to the same
    :class:`AsErrorObserver` (:mod:`broker.oauth.metadata`)."""

    TOKEN = "token"  # noqa: S105 - an endpoint name
    PAR = "par"
    METADATA = "metadata"
    JWKS = "jwks"


class AsErrorObserver(Protocol):
    """Told of every error answer of the authorization server that :func:`error_from_response`
    classifies, and of every non-200 answer to a discovery or JWKS fetch: which endpoint, the
    HTTP status it is read as, the OAuth ``error`` code when the body had one (chosen by the
    AS: unbounded text, never a secret; always ``None`` for discovery and the JWKS)."""

    def as_error(self, endpoint: str, status: int, error: str | None) -> None: ...


def classify(
    status: int,
    *,
    endpoint: Endpoint,
    error: str | None = None,
    description: str | None = None,
    retry_after: float | None = None,
    skew_offset: float | None = None,
    grant_type: str | None = None,
) -> OAuthClientError:
    """The exception for a non-success answer: HTTP ``status``, the OAuth ``error`` code when
    the body had one, ``skew_offset`` (AS minus us, seconds) only while skew is suspected,
    ``grant_type`` of the token request (a ``client_credentials`` request has no grant to
    lose: DOME's empty 403 there rejects the machine's credential or presentation)."""
    if status == 429 or status >= 500 or error in _TRANSIENT_ERRORS:
        what = f" error={error}" if error else ""
        return AuthServerUnavailable(
            f"{endpoint} endpoint answered HTTP {status}{what}",
            status_code=status,
            retry_after=retry_after,
        )
    if error == INVALID_CLIENT or (error is None and status == 401):
        if error is None:
            description = "HTTP 401 without an OAuth error"
        if skew_offset is not None:
            return ClockSkewSuspected(
                INVALID_CLIENT, status_code=status, description=description, offset=skew_offset
            )
        return ClientAuthenticationFailed(
            INVALID_CLIENT, status_code=status, description=description
        )
    if error == "invalid_grant":
        return InvalidGrant(status_code=status, description=description)
    if error is not None:
        return OAuthErrorResponse(error, status_code=status, description=description)
    if endpoint is Endpoint.TOKEN and status in _DEAD_GRANT_STATUSES:
        if grant_type == CLIENT_CREDENTIALS:
            return MachineGrantRejected(
                "m2m_rejected", status_code=status, description="non-OAuth error response"
            )
        return InvalidGrant(status_code=status, description="non-OAuth error response")
    return UnexpectedResponse(f"{endpoint} endpoint answered HTTP {status}", status_code=status)


def _oauth_error(resp: bounded.HttpResponse) -> tuple[str | None, str | None]:
    """``(error, error_description)`` of an RFC 6749 section 5.2 body, Nones otherwise."""
    if not resp.body.strip():
        return None, None
    try:
        doc = bounded.parse_json_object(resp)
    except UnexpectedResponse:
        return None, None
    error = doc.get("error")
    if not isinstance(error, str) or not error:
        return None, None
    description = doc.get("error_description")
    return error, description if isinstance(description, str) else None


def error_from_response(
    resp: bounded.HttpResponse,
    *,
    endpoint: Endpoint,
    now: float,
    client_id: str,
    skew: SkewMonitor | None = None,
    status: int | None = None,
    grant_type: str | None = None,
    observer: AsErrorObserver | None = None,
) -> OAuthClientError:
    """Classify ``resp`` (``status`` overrides its HTTP status: a 200 carrying an OAuth error
    is read as a 400) and tell ``observer``. Logs a client-authentication failure at ERROR
    with its likely cause."""
    error, description = _oauth_error(resp)
    code = resp.status_code if status is None else status
    if observer is not None:
        observer.as_error(str(endpoint), code, error)
    suspected = skew is not None and skew.suspected()
    exc = classify(
        code,
        endpoint=endpoint,
        error=error,
        description=description,
        retry_after=bounded.parse_retry_after(resp.headers.get("retry-after"), now=now),
        skew_offset=(skew.offset or 0.0) if skew is not None and suspected else None,
        grant_type=grant_type,
    )
    if isinstance(exc, ClientAuthenticationFailed):
        _log.error(
            "the authorization server %s refused our client authentication at its %s endpoint "
            "(HTTP %d, %s): %s",
            resp.host,
            endpoint,
            code,
            exc.reason,
            likely_cause(exc, client_id=client_id),
        )
    return exc


def likely_cause(exc: ClientAuthenticationFailed, *, client_id: str) -> str:
    """What an operator should check, for a log line or a doctor detail (no secrets)."""
    if isinstance(exc, MachineGrantRejected):
        return (
            f"the Verifier refused the machine credential presented by {client_id} without a "
            "reason (our own checks of it passed: type LEARCredentialMachine, bound to our "
            "did, within its validity window, aud the issuer). Likely causes: the credential's "
            "issuer or its mandator (did:elsi:<organizationIdentifier>) is not in the "
            "Verifier's trusted issuers list, the credential is revoked, the Verifier's clock "
            "is ahead of ours (the assertion's exp has no skew allowance there), or the did "
            "is not in the Trusted Services List"
        )
    if isinstance(exc, ClockSkewSuspected):
        where = "behind" if exc.offset > 0 else "ahead of"
        return (
            f"likely clock skew: our clock is {abs(exc.offset):.1f} s {where} the server's, so "
            "the client assertion's iat/exp fall outside its window; fix NTP (or set "
            "[oauth].compensate_skew = true)"
        )
    return (
        f"likely causes: the did {client_id} is not in the Trusted Services List (or the "
        "Verifier was not restarted after it was added), its registered jwkSetUrl names "
        "another did, or the assertion's kid does not match the registered key; run "
        "`broker doctor` (as.dome_did)"
    )
