"""One exception tree for the whole broker.

Every error the broker raises is a :class:`BrokerError`. Third-party errors are wrapped at the
boundary with ``raise ... from``. Each class carries a stable machine-readable ``reason`` and a
``retryable`` flag; callers branch on the class or those fields, never on message text.

Messages never contain secrets (PINs, tokens, codes, assertions, key material).
"""

from __future__ import annotations


class BrokerError(Exception):
    """Root of every broker error."""

    reason: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason


# --- caller errors -----------------------------------------------------------------------------


class InvalidArgument(BrokerError):
    """A caller-supplied value is empty, too long or malformed."""

    reason = "invalid_argument"


class PermissionDenied(BrokerError):
    """The caller's identity is not allowed to do this."""

    reason = "permission_denied"


class MalformedIdentity(PermissionDenied):
    """The caller's certificate does not carry a well-formed identity (not exactly one valid
    SPIFFE ID URI SAN, a CA certificate as leaf, a malformed CN identity). Checked before any
    policy lookup."""

    reason = "malformed_identity"


class NotFound(BrokerError):
    """An unknown grant, login or key."""

    reason = "not_found"


class ConfigError(BrokerError):
    """The configuration is invalid or incomplete."""

    reason = "config"


# --- key custody -------------------------------------------------------------------------------


class KeyStoreError(BrokerError):
    """Any failure of key custody."""

    reason = "keystore"


class KeyNotFound(KeyStoreError, NotFound):
    reason = "key_not_found"


class KeyExists(KeyStoreError):
    reason = "key_exists"


class TokenNotPresent(KeyStoreError):
    """The PKCS#11 token (by label) is not present."""

    reason = "token_not_present"
    retryable = True


class PinIncorrect(KeyStoreError):
    """Wrong PIN. Never retried automatically (lock-out risk)."""

    reason = "pin_incorrect"


class PinLocked(KeyStoreError):
    reason = "pin_locked"


class HsmUnavailable(KeyStoreError):
    """The HSM session or device is gone; recovery failed for now. Retry later."""

    reason = "hsm_unavailable"
    retryable = True


class HsmBusy(HsmUnavailable):
    """Too many calls wait for the HSM: the bounded wait for it ran out (D07). Retry later."""

    reason = "hsm_busy"


class InvalidKey(KeyStoreError):
    """A key is of the wrong type or curve, or has the wrong attributes."""

    reason = "invalid_key"


class InsecurePinFile(KeyStoreError):
    """A PIN file is readable or writable by group or others (as ssh refuses such key files)."""

    reason = "insecure_pin_file"


class OrphanKey(KeyStoreError):
    """A key exists in the token with no audit record of its creation (an interrupted ceremony).

    The operator adopts it (records it) or destroys it before any other ceremony continues."""

    reason = "orphan_key"


class InvalidKeyUri(KeyStoreError, InvalidArgument):
    """A malformed RFC 7512 PKCS#11 URI; the message names the bad part."""

    reason = "invalid_key_uri"


class DidError(InvalidArgument):
    """A malformed or unsupported did:key."""

    reason = "invalid_did"


# --- key ceremonies and audit ------------------------------------------------------------------


class AuditError(BrokerError):
    """The audit log cannot be opened, locked, read or written, or its tail is damaged.

    Ceremonies fail closed on it: no key operation runs unaudited.
    """

    reason = "audit"


class AuditUnavailable(AuditError):
    """The runtime audit trail did not take a record in time (blocked or failing sink).

    Whatever needed that record (a new grant) is refused; retry later (H01)."""

    reason = "audit_unavailable"
    retryable = True


class ConfirmationMismatch(BrokerError):
    """The operator did not confirm a destructive step (typed another value, or nothing)."""

    reason = "confirmation_mismatch"


class SelfTestFailed(KeyStoreError):
    """A signature made in the token does not verify with the key's did:key public key."""

    reason = "selftest_failed"


class CredentialError(BrokerError):
    """The machine's LEARCredentialMachine (the VC the DOME Issuer gave the broker's did:key)
    cannot be used: malformed, not a LEARCredentialMachine, bound to another did, outside its
    validity window, badly signed, or its certificate does not match its issuer.

    Not retryable: an operator imports a new credential. The instance ``reason`` says which:
    ``malformed``, ``not_lear_machine``, ``not_bound``, ``expired``, ``not_yet_valid``,
    ``bad_signature``, ``issuer_mismatch``, ``untrusted_chain``; for the stored file
    ``missing``, ``unreadable``, ``unwritable``."""

    reason = "credential"


# --- OAuth / OIDC ------------------------------------------------------------------------------


class OAuthClientError(BrokerError):
    """Any failure talking to the authorization server."""

    reason = "oauth"


class DiscoveryError(OAuthClientError):
    """AS metadata could not be fetched or is invalid (issuer mismatch, http endpoint, ...)."""

    reason = "discovery"
    retryable = True


class EndpointOriginRefused(DiscoveryError):
    """The AS metadata names an endpoint the broker sends credentials to (token, PAR, JWKS,
    revocation) on another origin than the issuer's, and that origin is not listed in
    ``[oauth].allowed_endpoint_origins``. A misconfiguration: retrying cannot help."""

    reason = "endpoint_origin_refused"
    retryable = False


class AuthServerUnavailable(OAuthClientError):
    """Transport failure, timeout, 5xx or 429: retryable."""

    reason = "as_unavailable"
    retryable = True

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class OAuthErrorResponse(OAuthClientError):
    """The AS answered with an RFC 6749 section 5.2 error object."""

    reason = "oauth_error"

    def __init__(self, error: str, *, status_code: int, description: str | None = None) -> None:
        super().__init__(f"authorization server answered {status_code} error={error}")
        self.error = error
        self.status_code = status_code
        self.description = description


class InvalidGrant(OAuthErrorResponse):
    """``invalid_grant``, or DOME's empty-bodied 403/500 on a refresh: the grant is dead."""

    reason = "invalid_grant"

    def __init__(
        self, error: str = "invalid_grant", *, status_code: int, description: str | None = None
    ) -> None:
        super().__init__(error, status_code=status_code, description=description)


class ClientAuthenticationFailed(OAuthErrorResponse):
    """``invalid_client`` (or an equivalent 401) from the token endpoint: the AS does not accept
    our client authentication. Likely causes: the did:key is not (yet) in the Trusted Services
    List, the registered ``jwkSetUrl`` names another did, or the assertion's ``kid`` does not
    match. Not retryable: an operator has to act."""

    reason = "client_authentication_failed"
    retryable = False


class MachineGrantRejected(ClientAuthenticationFailed):
    """A ``client_credentials`` request (DOME machine-to-machine, with a LEARCredentialMachine
    in the assertion's ``vp_token``) answered by a non-OAuth 400/403, DOME's empty 403, after
    the broker's own checks of the credential passed. The Verifier gives no reason; likely: the
    credential's issuer or mandator is not a trusted issuer, the credential is revoked, or the
    Verifier's clock disagrees. Not retryable: an operator has to act."""

    reason = "m2m_rejected"
    retryable = False


class ClockSkewSuspected(ClientAuthenticationFailed):
    """``invalid_client`` from the token endpoint while our clock is measured far off the AS's
    (``Date`` headers): most likely the client assertion's ``iat``/``exp`` are outside the AS's
    window. A client-authentication failure with a known likely cause. Not retryable: retrying
    cannot help until the clock is fixed. ``offset`` is the smoothed AS-minus-us offset in
    seconds."""

    reason = "clock_skew_suspected"
    retryable = False

    def __init__(
        self,
        error: str = "invalid_client",
        *,
        status_code: int,
        description: str | None = None,
        offset: float = 0.0,
    ) -> None:
        super().__init__(error, status_code=status_code, description=description)
        self.args = (
            f"authorization server answered {status_code} error={error} while our clock "
            f"is {-offset:+.1f} s off the server's (clock skew suspected)",
        )
        self.offset = offset


class UnexpectedResponse(OAuthClientError):
    """A non-OAuth error or a malformed response (non-JSON, too large, bad fields)."""

    reason = "unexpected_response"
    retryable = True

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class TokenValidationError(OAuthClientError):
    """An id_token (or other AS-signed JWT) failed validation."""

    reason = "token_invalid"


class AuthorizationResponseError(OAuthClientError):
    """The authorization response is invalid (unknown state, wrong iss, error=...)."""

    reason = "authorization_response"


class LoginExpired(AuthorizationResponseError):
    reason = "login_expired"


# --- grants ------------------------------------------------------------------------------------


class GrantNotFound(NotFound):
    reason = "grant_not_found"


class LoginNotFound(NotFound):
    reason = "login_not_found"


class ReauthorizationRequired(BrokerError):
    """The grant's refresh token is dead: a user must log in again."""

    reason = "reauthorization_required"


class GrantRevoked(ReauthorizationRequired):
    """The grant was revoked by an operator: no token is served for it any more."""

    reason = "grant_revoked"


class StoreError(BrokerError):
    """The grant store failed (I/O, connection)."""

    reason = "store"
    retryable = True


class DeploymentMismatch(StoreError):
    """The grant store belongs to another deployment (issuer, client_id, did:key or schema), or a
    grant belongs to another issuer/client than the one it would be sent to. Never retried."""

    reason = "deployment_mismatch"
    retryable = False


class StoreUnusable(StoreError):
    """The store file or schema exists but is not a store of ours (empty, truncated, foreign).

    It is refused, never overwritten."""

    reason = "store_unusable"
    retryable = False


class GrantExists(StoreError):
    """``create`` was given a ``grant_id`` that is already stored."""

    reason = "grant_exists"
    retryable = False


class VersionConflict(StoreError):
    """``rotate`` saw another stored version than expected: someone else rotated first.

    Re-read the grant (its refresh token is the newer one) instead of retrying the write.
    """

    reason = "version_conflict"


class AuthorizationDenied(AuthorizationResponseError):
    """The authorization response carried ``error=...`` (RFC 6749 section 4.1.2.1).

    ``error`` is the AS's error code (a short ASCII token, never a secret)."""

    reason = "authorization_error"

    def __init__(self, error: str) -> None:
        super().__init__(f"the authorization server answered error={error}")
        self.error = error


class LoginCapacityExceeded(BrokerError):
    """Too many logins are pending at once: retry later."""

    reason = "too_many_logins"
    retryable = True
