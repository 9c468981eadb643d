"""Authorization-server metadata and its JWKS (RFC 8414 / OpenID Connect Discovery 1.0).

The issuer in the document must equal the configured issuer exactly, as strings (OIDC
Discovery section 4.3, RFC 8414 section 3.3; catalogue A01); every endpoint must be https
(RFC 9700 section 2.6; A11), and the token, PAR, JWKS and revocation endpoints on the issuer's
origin or one listed in the configuration (:mod:`broker.oauth.origins`). Metadata is cached
with a TTL; the JWKS is re-fetched once for an unknown ``kid`` but at most once per
``min_refetch_interval`` (A09).

A non-200 answer to either fetch is told to the client's
:class:`~broker.oauth.as_errors.AsErrorObserver` (endpoint ``metadata`` or ``jwks``, no OAuth
code), like the token endpoint's error answers. A transport failure (no answer) and a document
that is refused (issuer mismatch, an http endpoint, no ``keys``) are not: the first is the HTTP
client span's ``error.type``, the second is logged at ERROR.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from jwcrypto import jwk
from opentelemetry import trace
from opentelemetry.trace import Tracer

from broker.clock import Clock
from broker.errors import DiscoveryError, EndpointOriginRefused, TokenValidationError
from broker.oauth import http as bounded
from broker.oauth.as_errors import AsErrorObserver, Endpoint
from broker.oauth.config import ClientConfig
from broker.oauth.origins import OriginVerdict, endpoint_origins

log = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/openid-configuration"


@dataclass(frozen=True)
class ServerMetadata:
    """The fields of the AS metadata the broker uses (validated), plus the raw document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    pushed_authorization_request_endpoint: str | None = None
    authorization_response_iss_parameter_supported: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def discovery_url(issuer: str) -> str:
    """OIDC Discovery section 4: strip one trailing ``/`` of the issuer, append the path."""
    return issuer.removesuffix("/") + WELL_KNOWN


def _check_endpoint(name: str, value: object, *, allow_http: bool) -> str:
    if not isinstance(value, str) or not value:
        raise DiscoveryError(f"metadata {name} is missing or not a string", reason="missing_field")
    parts = urlsplit(value)
    allowed = {"https", "http"} if allow_http else {"https"}
    if parts.scheme not in allowed or not parts.netloc:
        raise DiscoveryError(f"metadata {name} is not an https URL", reason="insecure_endpoint")
    if parts.fragment:
        raise DiscoveryError(f"metadata {name} has a fragment", reason="invalid_endpoint")
    return value


def parse_metadata(doc: Mapping[str, Any], config: ClientConfig) -> ServerMetadata:
    """Validate a discovery document against the configuration (RFC 8414 section 3.3)."""
    issuer = doc.get("issuer")
    if not isinstance(issuer, str) or issuer != config.issuer:
        raise DiscoveryError(
            "metadata issuer does not match the configured issuer exactly", reason="issuer_mismatch"
        )
    allow = config.allow_http_issuer
    par = doc.get("pushed_authorization_request_endpoint")
    iss_param = doc.get("authorization_response_iss_parameter_supported", False)
    if not isinstance(iss_param, bool):
        raise DiscoveryError(
            "authorization_response_iss_parameter_supported is not a boolean",
            reason="invalid_field",
        )
    metadata = ServerMetadata(
        issuer=issuer,
        authorization_endpoint=_check_endpoint(
            "authorization_endpoint", doc.get("authorization_endpoint"), allow_http=allow
        ),
        token_endpoint=_check_endpoint(
            "token_endpoint", doc.get("token_endpoint"), allow_http=allow
        ),
        jwks_uri=_check_endpoint("jwks_uri", doc.get("jwks_uri"), allow_http=allow),
        pushed_authorization_request_endpoint=(
            None
            if par is None
            else _check_endpoint("pushed_authorization_request_endpoint", par, allow_http=allow)
        ),
        authorization_response_iss_parameter_supported=iss_param,
        raw=dict(doc),
    )
    for found in endpoint_origins(
        doc, issuer=config.issuer, allowed=config.allowed_endpoint_origins
    ):
        if found.verdict is OriginVerdict.REFUSED:
            raise EndpointOriginRefused(
                f"metadata {found.name} is on {found.origin}, not the issuer's origin nor listed "
                "in [oauth].allowed_endpoint_origins"
            )
    return metadata


class MetadataCache:
    """Fetches, validates and caches the AS metadata (one fetch at a time)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        config: ClientConfig,
        clock: Clock,
        ttl: float = 3600.0,
        *,
        tracer: Tracer | None = None,
        observer: AsErrorObserver | None = None,
    ) -> None:
        self._http = http
        self._config = config
        self._clock = clock
        self._ttl = ttl
        self._tracer = tracer or trace.get_tracer("broker.oauth")
        self._observer = observer
        self._cached: ServerMetadata | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._cached = None

    async def get(self) -> ServerMetadata:
        """The current metadata; fetched when absent or older than the TTL.

        Raises :class:`DiscoveryError` (issuer mismatch, http endpoint, missing field),
        :class:`broker.errors.AuthServerUnavailable` or :class:`broker.errors.UnexpectedResponse`.
        Nothing is cached after a failure.
        """
        cached = self._cached
        if cached is not None and self._clock.monotonic() - self._fetched_at < self._ttl:
            return cached
        async with self._lock:
            cached = self._cached
            if cached is not None and self._clock.monotonic() - self._fetched_at < self._ttl:
                return cached
            self._cached = None
            url = discovery_url(self._config.issuer)
            with self._tracer.start_as_current_span("oauth.discovery") as span:
                span.set_attribute("server.address", bounded.host_of(url))
                resp = await bounded.request(
                    self._http,
                    "GET",
                    url,
                    timeout=self._config.http_timeout,
                    max_bytes=self._config.max_response_bytes,
                )
                span.set_attribute("http.response.status_code", resp.status_code)
                if resp.status_code != 200:
                    if self._observer is not None:
                        self._observer.as_error(Endpoint.METADATA, resp.status_code, None)
                    raise DiscoveryError(
                        f"discovery answered HTTP {resp.status_code}", reason="http_status"
                    )
                try:
                    metadata = parse_metadata(bounded.parse_json_object(resp), self._config)
                except DiscoveryError as exc:
                    # A01/A11: the AS is unusable until its metadata is fixed; alert operators.
                    log.error(
                        "authorization server metadata rejected (%s) for issuer %s",
                        exc.reason,
                        self._config.issuer,
                    )
                    span.set_attribute("error.type", exc.reason)
                    raise
            self._cached = metadata
            self._fetched_at = self._clock.monotonic()
            return metadata


def _usable_es256(key: Mapping[str, Any]) -> bool:
    """A JWK usable to verify ES256: EC P-256, signature use, alg absent or ES256."""
    return (
        key.get("kty") == "EC"
        and key.get("crv") == "P-256"
        and key.get("use", "sig") == "sig"
        and key.get("alg", "ES256") == "ES256"
        and not ("key_ops" in key and "verify" not in (key.get("key_ops") or []))
    )


class JwksCache:
    """The AS signing keys (RFC 7517), for ES256 id_token verification."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        metadata: MetadataCache,
        config: ClientConfig,
        clock: Clock,
        *,
        ttl: float = 3600.0,
        min_refetch_interval: float = 60.0,
        tracer: Tracer | None = None,
        observer: AsErrorObserver | None = None,
    ) -> None:
        self._http = http
        self._metadata = metadata
        self._config = config
        self._clock = clock
        self._ttl = ttl
        self._min_refetch = min_refetch_interval
        self._tracer = tracer or trace.get_tracer("broker.oauth")
        self._observer = observer
        self._keys: list[dict[str, Any]] | None = None
        self._fetched_at = 0.0
        self._last_refetch: float | None = None
        self._lock = asyncio.Lock()
        self.fetch_count = 0
        # The JWK last built per kid, with the fetched member dict it was built from: a key
        # is built once per JWKS fetch, not per id_token (building one costs ~40 us).
        self._built: dict[str | None, tuple[dict[str, Any], jwk.JWK]] = {}

    async def _fetch(self) -> list[dict[str, Any]]:
        md = await self._metadata.get()
        with self._tracer.start_as_current_span("oauth.jwks") as span:
            span.set_attribute("server.address", bounded.host_of(md.jwks_uri))
            resp = await bounded.request(
                self._http,
                "GET",
                md.jwks_uri,
                timeout=self._config.http_timeout,
                max_bytes=self._config.max_response_bytes,
                accept="application/jwk-set+json, application/json",
            )
            self.fetch_count += 1
            span.set_attribute("http.response.status_code", resp.status_code)
            if resp.status_code != 200:
                if self._observer is not None:
                    self._observer.as_error(Endpoint.JWKS, resp.status_code, None)
                raise DiscoveryError(f"JWKS answered HTTP {resp.status_code}", reason="jwks_http")
            doc = bounded.parse_json_object(resp)
            keys = doc.get("keys")
            if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
                raise DiscoveryError("JWKS has no 'keys' array of objects", reason="jwks_invalid")
            usable = [k for k in keys if _usable_es256(k)]
            span.set_attribute("jwks.keys", len(keys))
            span.set_attribute("jwks.usable_keys", len(usable))
            return usable

    async def _load(self, *, refetch: bool) -> list[dict[str, Any]]:
        async with self._lock:
            now = self._clock.monotonic()
            stale = self._keys is None or now - self._fetched_at >= self._ttl
            if refetch and not stale:
                if self._last_refetch is not None and now - self._last_refetch < self._min_refetch:
                    assert self._keys is not None
                    return self._keys
                self._last_refetch = now
            if stale or refetch:
                self._keys = await self._fetch()
                self._built.clear()
                self._fetched_at = self._clock.monotonic()
            assert self._keys is not None
            return self._keys

    @staticmethod
    def _select(keys: list[dict[str, Any]], kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            if len(keys) > 1:
                raise TokenValidationError(
                    "token has no kid and the JWKS holds several ES256 keys", reason="ambiguous_kid"
                )
            return keys[0] if keys else None
        matches = [k for k in keys if k.get("kid") == kid]
        if len(matches) > 1:
            raise TokenValidationError(
                "several ES256 keys share the token's kid", reason="ambiguous_kid"
            )
        return matches[0] if matches else None

    async def key_for(self, kid: str | None) -> jwk.JWK:
        """The P-256 verification key for ``kid`` (or the single key when ``kid`` is absent);
        the same object while the JWKS is not re-fetched (callers read it, never change it).

        An unknown ``kid`` triggers one JWKS re-fetch (rate-limited); then
        :class:`TokenValidationError` with reason ``unknown_kid``.
        """
        found = self._select(await self._load(refetch=False), kid)
        if found is None:
            found = self._select(await self._load(refetch=True), kid)
        if found is None:
            raise TokenValidationError(
                "no ES256 key in the JWKS for this token", reason="unknown_kid"
            )
        built = self._built.get(kid)
        if built is not None and built[0] is found:  # the same fetched key: built already
            return built[1]
        try:
            key = jwk.JWK(**found)
        except (jwk.InvalidJWKValue, ValueError, TypeError) as exc:
            raise DiscoveryError("JWKS key is malformed", reason="jwks_invalid") from exc
        self._built[kid] = (found, key)
        return key
