"""Settings of one OAuth client registration at one authorization server (frozen)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from broker.errors import ConfigError
from broker.oauth.origins import parse_allowed_origin
from broker.strict_json import DOCUMENT_MAX_BYTES, JWT_MAX_BYTES

MAX_REQUEST_OBJECT_LIFETIME = 600.0  # RFC 9101 guidance / DOME profile: exp <= 10 min


@dataclass(frozen=True)
class ClientConfig:
    """One confidential client (``client_id`` is our did:key) at one issuer.

    ``dome_compat`` turns on the DOME Verifier compatibility mode (DOME-PROFILE.md, bug 1):
    refreshes of this client wait while a code exchange is pending.
    ``allow_http_issuer`` permits ``http://`` issuer and endpoints: for tests only.
    ``allowed_endpoint_origins``: https origins, besides the issuer's, that the AS metadata may
    name for the token, PAR, JWKS and revocation endpoints (:mod:`broker.oauth.origins`).

    The client assertion's ``aud`` is always the issuer (RFC 7523bis, FAPI 2.0): there is no
    option to put the token endpoint URL there, which would let the metadata choose it.
    """

    issuer: str
    client_id: str
    redirect_uri: str
    scope: str = "openid learcredential"
    use_pkce: bool = True
    use_par: bool = False
    dome_compat: bool = True
    clock_skew: float = 60.0
    request_object_lifetime: float = 300.0
    http_timeout: float = 10.0
    # Every AS response body, as read and as JSON text; one compact JWT (id_token) from the AS.
    max_response_bytes: int = DOCUMENT_MAX_BYTES
    max_jwt_bytes: int = JWT_MAX_BYTES
    refresh_max_attempts: int = 3
    refresh_backoff_base: float = 5.0
    refresh_backoff_max: float = 60.0
    default_expires_in: int = 300
    allow_http_issuer: bool = False
    allowed_endpoint_origins: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("issuer", "client_id", "redirect_uri", "scope"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or value != value.strip():
                raise ConfigError(f"{name} must be a non-empty string without surrounding spaces")
        allowed = {"https", "http"} if self.allow_http_issuer else {"https"}
        parts = urlsplit(self.issuer)
        if parts.scheme not in allowed or not parts.netloc:
            raise ConfigError("issuer must be an absolute https URL")
        if parts.query or parts.fragment:
            raise ConfigError("issuer must not have a query or fragment (OIDC Discovery 3)")
        for origin in self.allowed_endpoint_origins:
            try:
                normalized = parse_allowed_origin(origin)
            except ValueError as exc:
                raise ConfigError(f"allowed_endpoint_origins entry {exc}") from None
            if normalized != origin:
                raise ConfigError(
                    "allowed_endpoint_origins entries must be normalized origins "
                    f"(e.g. {normalized!r})"
                )
        if not 0 <= self.clock_skew <= 300:
            raise ConfigError("clock_skew must be within [0, 300] seconds")
        if not 0 < self.request_object_lifetime <= MAX_REQUEST_OBJECT_LIFETIME:
            raise ConfigError("request_object_lifetime must be within (0, 600] seconds")
        if self.http_timeout <= 0:
            raise ConfigError("http_timeout must be positive")
        if self.max_response_bytes < 1024:
            raise ConfigError("max_response_bytes must be at least 1024")
        if not 1024 <= self.max_jwt_bytes <= self.max_response_bytes:
            raise ConfigError("max_jwt_bytes must be within [1024, max_response_bytes]")
        if self.refresh_max_attempts < 1:
            raise ConfigError("refresh_max_attempts must be at least 1")
        if self.refresh_backoff_base < 0 or self.refresh_backoff_max < self.refresh_backoff_base:
            raise ConfigError("refresh backoff must satisfy 0 <= base <= max")
        if self.default_expires_in < 1:
            raise ConfigError("default_expires_in must be at least 1")
