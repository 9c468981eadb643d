"""The OAuth/OIDC client of one registration: composes discovery, client authentication, the
token endpoint, PAR and id_token validation. Implements :class:`broker.tokens.ports.Refresher`.

DOME compatibility (DOME-PROFILE.md, known bug 1): the Verifier keeps one pending authorization
per client, so a refresh that runs between a code's issue and its exchange kills the code.
With ``config.dome_compat`` a refresh waits while any code exchange of this client is pending
(:meth:`OAuthClient.exchange_gate`, held by the login flow; code exchanges never wait).

Clock skew (TEST-CATALOGUE C09): with a :class:`broker.oauth.skew.SkewMonitor` every AS response
feeds its ``Date`` header to the monitor (an httpx response hook on ``http``); client assertions
use the AS's time when the monitor compensates; the monitor goes with every request to the one
classifier of AS errors (:mod:`broker.oauth.as_errors`), which makes an ``invalid_client``
while the skew is large a :class:`broker.errors.ClockSkewSuspected` (not retryable: no retry
storm).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import Tracer, TracerProvider

from broker.clock import Clock
from broker.errors import AuthServerUnavailable, TokenValidationError
from broker.keys.api import Signer
from broker.oauth import par, token_endpoint
from broker.oauth.as_errors import AsErrorObserver
from broker.oauth.config import ClientConfig
from broker.oauth.id_token import validate_id_token
from broker.oauth.metadata import JwksCache, MetadataCache, ServerMetadata
from broker.oauth.skew import SkewMonitor
from broker.oauth.token_endpoint import AssertionClaims, RawTokenResponse, Sleep
from broker.oauth.types import TokenSet


@dataclasses.dataclass(frozen=True)
class ClientTimings:
    """How long the client trusts what it fetched and how long a refresh waits for the gate.

    ``metadata_ttl``: seconds the AS metadata is cached. ``jwks_min_refetch_interval``: the
    least seconds between two JWKS fetches (an unknown ``kid`` refetches, at most this often).
    ``gate_wait_timeout``: seconds a refresh waits for pending code exchanges in DOME
    compatibility mode before it fails retryably (``None``: three HTTP timeouts plus 5 s, as
    each pending exchange is bounded by the HTTP timeout).
    """

    metadata_ttl: float = 3600.0
    jwks_min_refetch_interval: float = 60.0
    gate_wait_timeout: float | None = None

    def gate_wait(self, config: ClientConfig) -> float:
        if self.gate_wait_timeout is not None:
            return self.gate_wait_timeout
        return 3 * config.http_timeout + 5.0


DEFAULT_TIMINGS = ClientTimings()


@dataclasses.dataclass(frozen=True)
class ClientReporting:
    """Where the client reports: its spans (``tracer_provider``; ``None``: the global one) and
    every error answer of the authorization server (``as_errors``: token endpoint, PAR,
    discovery, JWKS; the composition root connects ``broker.as.errors``; ``None``: nobody)."""

    tracer_provider: TracerProvider | None = None
    as_errors: AsErrorObserver | None = None

    def tracer(self) -> Tracer:
        return trace.get_tracer("broker.oauth", tracer_provider=self.tracer_provider)


DEFAULT_REPORTING = ClientReporting()


class OAuthClient:
    """One confidential client (``config.client_id``, our did:key) at one issuer."""

    def __init__(
        self,
        config: ClientConfig,
        http: httpx.AsyncClient,
        signer: Signer,
        clock: Clock,
        *,
        timings: ClientTimings = DEFAULT_TIMINGS,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        skew: SkewMonitor | None = None,
        reporting: ClientReporting = DEFAULT_REPORTING,
    ) -> None:
        self.config = config
        self._as_errors = reporting.as_errors
        self._http = http
        self._signer = signer
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._tracer = reporting.tracer()
        self.skew = skew
        self._assertion_clock = skew.assertion_clock(clock) if skew is not None else clock
        if skew is not None:
            skew.attach(http)
        self._metadata = MetadataCache(
            http,
            config,
            clock,
            timings.metadata_ttl,
            tracer=self._tracer,
            observer=self._as_errors,
        )
        self.jwks = JwksCache(
            http,
            self._metadata,
            config,
            clock,
            min_refetch_interval=timings.jwks_min_refetch_interval,
            tracer=self._tracer,
            observer=self._as_errors,
        )
        self._pending_exchanges = 0
        self._no_exchange = asyncio.Event()
        self._no_exchange.set()
        self._gate_wait_timeout = timings.gate_wait(config)

    def __repr__(self) -> str:
        return f"OAuthClient(issuer={self.config.issuer!r}, client_id={self.config.client_id!r})"

    @property
    def pending_exchanges(self) -> int:
        return self._pending_exchanges

    async def metadata(self) -> ServerMetadata:
        """Validated, cached AS metadata (RFC 8414 / OIDC Discovery)."""
        return await self._metadata.get()

    def exchange_gate(self) -> AbstractAsyncContextManager[None]:
        """Mark a code exchange as pending for this client (re-entrant, counting)."""
        return self._gate()

    @asynccontextmanager
    async def _gate(self) -> AsyncIterator[None]:
        self._pending_exchanges += 1
        self._no_exchange.clear()
        try:
            yield
        finally:
            self._pending_exchanges -= 1
            if self._pending_exchanges == 0:
                self._no_exchange.set()

    async def _wait_for_exchanges(self) -> None:
        if not self.config.dome_compat or self._pending_exchanges == 0:
            return
        trace.get_current_span().add_event(
            "oauth.wait_for_code_exchange", {"oauth.pending_exchanges": self._pending_exchanges}
        )
        try:
            async with asyncio.timeout(self._gate_wait_timeout):
                while self._pending_exchanges:
                    await self._no_exchange.wait()
        except TimeoutError:
            raise AuthServerUnavailable(
                "a code exchange of this client is still pending (DOME compatibility mode)"
            ) from None

    def _token_set(self, raw: RawTokenResponse, claims: dict[str, Any] | None) -> TokenSet:
        return TokenSet(
            access_token=raw.access_token,
            token_type=raw.token_type,
            expires_at=raw.received_at + raw.expires_in,
            received_at=raw.received_at,
            scope=raw.scope,
            refresh_token=raw.refresh_token,
            id_token=raw.id_token,
            id_claims=claims or {},
            refresh_expires_at=None
            if raw.refresh_expires_in is None
            else raw.received_at + raw.refresh_expires_in,
        )

    async def _validate(
        self, raw: RawTokenResponse, *, nonce: str | None, subject: str | None
    ) -> dict[str, Any]:
        assert raw.id_token is not None
        return await validate_id_token(
            raw.id_token,
            jwks=self.jwks,
            issuer=self.config.issuer,
            client_id=self.config.client_id,
            clock=self._clock,
            skew=self.config.clock_skew,
            nonce=nonce,
            expected_subject=subject,
            access_token=raw.access_token,
            max_bytes=self.config.max_jwt_bytes,
        )

    async def exchange_code(
        self, code: str, *, code_verifier: str | None, nonce: str | None
    ) -> TokenSet:
        """Authorization code grant (RFC 6749 4.1.3) and id_token validation (OIDC Core
        3.1.3.7) with the login's ``nonce``. One attempt; holds the exchange gate."""
        async with self.exchange_gate():
            md = await self.metadata()
            raw = await token_endpoint.exchange_code(
                self._http,
                self._signer,
                self.config,
                md,
                self._clock,
                code=code,
                code_verifier=code_verifier,
                tracer=self._tracer,
                assertion_clock=self._assertion_clock,
                skew=self.skew,
                observer=self._as_errors,
            )
            if raw.id_token is None:
                if "openid" in self.config.scope.split():
                    raise TokenValidationError(
                        "OpenID token response has no id_token", reason="missing_id_token"
                    )
                return self._token_set(raw, None)
            claims = await self._validate(raw, nonce=nonce, subject=None)
            return self._token_set(raw, claims)

    async def refresh(self, refresh_token: str, *, subject: str) -> TokenSet:
        """Refresh token grant (RFC 6749 section 6) with bounded retries; a returned id_token
        must keep ``iss`` and ``sub`` (OIDC Core 12.2). Without a new refresh token the old one
        is kept. Waits for pending code exchanges in DOME compatibility mode."""
        await self._wait_for_exchanges()
        md = await self.metadata()
        raw = await token_endpoint.refresh(
            self._http,
            self._signer,
            self.config,
            md,
            self._clock,
            refresh_token=refresh_token,
            sleep=self._sleep,
            jitter=self._jitter,
            tracer=self._tracer,
            assertion_clock=self._assertion_clock,
            skew=self.skew,
            observer=self._as_errors,
        )
        claims = None
        if raw.id_token is not None:
            claims = await self._validate(raw, nonce=None, subject=subject)
        tokens = self._token_set(raw, claims)
        if tokens.refresh_token is None:
            tokens = dataclasses.replace(tokens, refresh_token=refresh_token)
        return tokens

    async def client_credentials(
        self, scope: str, *, assertion_extra: AssertionClaims | None = None
    ) -> TokenSet:
        """Client credentials grant (RFC 6749 section 4.4) with bounded retries like a refresh;
        ``assertion_extra`` adds claims to each attempt's assertion. No refresh token is kept
        (one the AS might send is dropped: a machine grant re-acquires) and no id_token is
        expected. Waits for pending code exchanges in DOME compatibility mode, like a refresh
        (the Verifier keeps one authorization per client)."""
        await self._wait_for_exchanges()
        md = await self.metadata()
        raw = await token_endpoint.client_credentials(
            self._http,
            self._signer,
            self.config,
            md,
            self._clock,
            scope=scope,
            assertion_extra=assertion_extra,
            sleep=self._sleep,
            jitter=self._jitter,
            tracer=self._tracer,
            assertion_clock=self._assertion_clock,
            skew=self.skew,
            observer=self._as_errors,
        )
        return dataclasses.replace(self._token_set(raw, None), refresh_token=None, id_token=None)

    async def push_authorization_request(self, request_object: str) -> tuple[str, int]:
        """RFC 9126 PAR: returns ``(request_uri, expires_in)``."""
        md = await self.metadata()
        # The clock is used for the client assertion (and Retry-After dates): AS time.
        return await par.push_authorization_request(
            self._http,
            self._signer,
            self.config,
            md,
            self._assertion_clock,
            request_object=request_object,
            tracer=self._tracer,
            skew=self.skew,
            observer=self._as_errors,
        )
