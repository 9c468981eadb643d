"""The token endpoint: authorization code grant (RFC 6749 section 4.1.3), refresh (section 6)
and client credentials (section 4.4), with strict response parsing (sections 5.1 and 5.2).

Each HTTP attempt carries a fresh client assertion (RFC 7523; new ``jti``, new HSM signature).
A code exchange is sent once and never retried automatically. A refresh is retried only for
retryable failures (transport, timeout, 5xx, 429) with exponential backoff, jitter and
``Retry-After``; never after ``invalid_grant`` (RFC 9700 section 4.14.2; catalogue A05, A06).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import Tracer

from broker.backoff import BackoffPolicy
from broker.clock import Clock
from broker.errors import (
    AuthServerUnavailable,
    InvalidArgument,
    OAuthErrorResponse,
    UnexpectedResponse,
)
from broker.keys.api import Signer
from broker.oauth import http as bounded
from broker.oauth.as_errors import AsErrorObserver, Endpoint, error_from_response
from broker.oauth.client_auth import client_assertion, client_auth_form
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import ServerMetadata
from broker.oauth.skew import SkewMonitor

BEARER = "Bearer"
MAX_EXPIRES_IN = 365 * 24 * 3600
SUPPORTED_TOKEN_TYPES = frozenset({"bearer"})

Sleep = Callable[[float], Awaitable[None]]
AssertionClaims = Callable[[float], Awaitable[Mapping[str, Any]]]
"""Extra client-assertion claims made per attempt at the assertion's time (DOME's
``vp_token``): a fresh presentation for every fresh assertion."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawTokenResponse:
    """A syntactically valid token response (RFC 6749 section 5.1); the id_token is not yet
    validated. ``expires_in_defaulted`` / ``scope_defaulted`` say a default was applied."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str
    received_at: float
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    expires_in_defaulted: bool = False
    scope_defaulted: bool = False
    refresh_expires_in: int | None = None
    """The refresh token's lifetime when the AS says (a non-standard member, e.g. Keycloak)."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def parse_expires_in(value: object, *, default: int) -> tuple[int, bool]:
    """``expires_in`` as an int in [1, 1 year]; integer strings accepted; missing -> default."""
    if value is None:
        return default, True
    if isinstance(value, bool):
        raise UnexpectedResponse("expires_in is not a number", status_code=200)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise UnexpectedResponse("expires_in is not an integer", status_code=200)
    if not 1 <= value <= MAX_EXPIRES_IN:
        raise UnexpectedResponse("expires_in is out of range [1, 1 year]", status_code=200)
    return value, False


def parse_refresh_expires_in(value: object) -> int | None:
    """``refresh_expires_in`` when it is a JSON integer in [1, 1 year]; anything else (absent,
    0 as Keycloak sends for offline tokens, a string, a float, a boolean) is ignored: the
    member is not standard and must not fail an otherwise valid response."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= MAX_EXPIRES_IN else None


def _optional_string(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UnexpectedResponse(f"{name} is not a non-empty string", status_code=200)
    return value


def parse_token_response(
    doc: Mapping[str, Any], *, config: ClientConfig, requested_scope: str, received_at: float
) -> RawTokenResponse:
    """Strict RFC 6749 section 5.1 parsing (catalogue A03, A04)."""
    access_token = doc.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise UnexpectedResponse("token response has no access_token string", status_code=200)
    token_type = doc.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() not in SUPPORTED_TOKEN_TYPES:
        raise UnexpectedResponse("token_type is not Bearer", status_code=200)
    expires_in, expires_defaulted = parse_expires_in(
        doc.get("expires_in"), default=config.default_expires_in
    )
    scope = doc.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise UnexpectedResponse("scope is not a string", status_code=200)
    return RawTokenResponse(
        access_token=access_token,
        token_type=BEARER,
        expires_in=expires_in,
        scope=scope if scope else requested_scope,
        received_at=received_at,
        refresh_token=_optional_string(doc, "refresh_token"),
        id_token=_optional_string(doc, "id_token"),
        expires_in_defaulted=expires_defaulted,
        scope_defaulted=not scope,
        refresh_expires_in=parse_refresh_expires_in(doc.get("refresh_expires_in")),
        raw=dict(doc),
    )


async def _token_request(
    http: httpx.AsyncClient,
    *,
    signer: Signer,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: Clock,
    form: dict[str, str],
    requested_scope: str,
    attempt: int,
    tracer: Tracer,
    assertion_clock: Clock | None = None,
    skew: SkewMonitor | None = None,
    assertion_extra: AssertionClaims | None = None,
    observer: AsErrorObserver | None = None,
) -> RawTokenResponse:
    grant_type = form["grant_type"]
    with tracer.start_as_current_span("oauth.token_request") as span:
        span.set_attribute("oauth.grant_type", grant_type)
        span.set_attribute("oauth.attempt", attempt)
        span.set_attribute("server.address", bounded.host_of(metadata.token_endpoint))
        try:
            # ``assertion_clock``: the AS's time when clock-skew compensation is on (C09).
            assertion_now = (assertion_clock or clock).now()
            extra = None if assertion_extra is None else await assertion_extra(assertion_now)
            assertion = await client_assertion(
                signer, config, metadata, now=assertion_now, extra_claims=extra
            )
            body = {**form, **client_auth_form(config.client_id, assertion)}
            resp = await bounded.request(
                http,
                "POST",
                metadata.token_endpoint,
                data=body,
                timeout=config.http_timeout,
                max_bytes=config.max_response_bytes,
            )
            span.set_attribute("http.response.status_code", resp.status_code)
            if resp.status_code != 200:
                raise error_from_response(
                    resp,
                    endpoint=Endpoint.TOKEN,
                    now=clock.now(),
                    client_id=config.client_id,
                    skew=skew,
                    grant_type=grant_type,
                    observer=observer,
                )
            doc = bounded.parse_json_object(resp)
            if "error" in doc and "access_token" not in doc:
                raise error_from_response(
                    resp,
                    endpoint=Endpoint.TOKEN,
                    now=clock.now(),
                    client_id=config.client_id,
                    skew=skew,
                    status=400,
                    grant_type=grant_type,
                    observer=observer,
                )
            return parse_token_response(
                doc, config=config, requested_scope=requested_scope, received_at=clock.now()
            )
        except OAuthErrorResponse as exc:
            span.set_attribute("oauth.error", exc.error)
            span.set_status(trace.StatusCode.ERROR, exc.reason)
            raise
        except Exception as exc:
            reason = getattr(exc, "reason", type(exc).__name__)
            span.set_attribute("error.type", str(reason))
            span.set_status(trace.StatusCode.ERROR, str(reason))
            raise


async def exchange_code(
    http: httpx.AsyncClient,
    signer: Signer,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: Clock,
    *,
    code: str,
    code_verifier: str | None,
    tracer: Tracer | None = None,
    assertion_clock: Clock | None = None,
    skew: SkewMonitor | None = None,
    observer: AsErrorObserver | None = None,
) -> RawTokenResponse:
    """Authorization code grant (RFC 6749 section 4.1.3; PKCE RFC 7636 section 4.5).

    Form: ``grant_type``, ``code``, ``redirect_uri``, ``code_verifier`` (if PKCE), ``client_id``
    and the client assertion; no ``state``. One attempt only: a code is single-use.
    """
    if not isinstance(code, str) or not code:
        raise InvalidArgument("authorization code must be a non-empty string")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": config.redirect_uri}
    if code_verifier is not None:
        form["code_verifier"] = code_verifier
    return await _token_request(
        http,
        signer=signer,
        config=config,
        metadata=metadata,
        clock=clock,
        form=form,
        requested_scope=config.scope,
        attempt=1,
        tracer=tracer or trace.get_tracer("broker.oauth"),
        assertion_clock=assertion_clock,
        skew=skew,
        observer=observer,
    )


RETRY_JITTER = 0.25
"""A retry's delay is stretched by up to 25 %."""


def retry_backoff(config: ClientConfig) -> BackoffPolicy:
    """The retry back-off of the token endpoint (:mod:`broker.backoff`): ``base * 2**(n-1)``
    stretched by up to 25 % jitter, capped at ``refresh_backoff_max``; the first is >= base."""
    return BackoffPolicy(
        initial=config.refresh_backoff_base,
        maximum=config.refresh_backoff_max,
        jitter=RETRY_JITTER,
    )


async def refresh(
    http: httpx.AsyncClient,
    signer: Signer,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: Clock,
    *,
    refresh_token: str,
    scope: str | None = None,
    sleep: Sleep = asyncio.sleep,
    jitter: Callable[[], float] = random.random,
    tracer: Tracer | None = None,
    assertion_clock: Clock | None = None,
    skew: SkewMonitor | None = None,
    observer: AsErrorObserver | None = None,
) -> RawTokenResponse:
    """Refresh token grant (RFC 6749 section 6), with bounded retries.

    Retries :class:`AuthServerUnavailable` (transport, timeout, 5xx, 429) up to
    ``refresh_max_attempts`` attempts in all, waiting ``Retry-After`` when given (giving up at
    once if it exceeds ``refresh_backoff_max``) or exponential backoff with jitter. Never retries
    :class:`InvalidGrant` or any other error.
    """
    if not isinstance(refresh_token, str) or not refresh_token:
        raise InvalidArgument("refresh token must be a non-empty string")
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scope is not None:
        form["scope"] = scope
    the_tracer = tracer or trace.get_tracer("broker.oauth")

    async def attempt(number: int) -> RawTokenResponse:
        return await _token_request(
            http,
            signer=signer,
            config=config,
            metadata=metadata,
            clock=clock,
            form=form,
            requested_scope=scope or config.scope,
            attempt=number,
            tracer=the_tracer,
            assertion_clock=assertion_clock,
            skew=skew,
            observer=observer,
        )

    return await _with_retries(attempt, config, sleep=sleep, jitter=jitter, what="refresh")


async def client_credentials(
    http: httpx.AsyncClient,
    signer: Signer,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: Clock,
    *,
    scope: str,
    assertion_extra: AssertionClaims | None = None,
    sleep: Sleep = asyncio.sleep,
    jitter: Callable[[], float] = random.random,
    tracer: Tracer | None = None,
    assertion_clock: Clock | None = None,
    skew: SkewMonitor | None = None,
    observer: AsErrorObserver | None = None,
) -> RawTokenResponse:
    """Client credentials grant (RFC 6749 section 4.4) with the client assertion of RFC 7523
    (plus ``assertion_extra`` claims, made per attempt), retried like a refresh: only
    :class:`AuthServerUnavailable`, with the same bounds and backoff. Every attempt is a new
    assertion (new ``jti``: DOME burns it before validating the rest)."""
    if not isinstance(scope, str) or not scope or scope != scope.strip():
        raise InvalidArgument("scope must be a non-empty string")
    form = {"grant_type": "client_credentials", "scope": scope}
    the_tracer = tracer or trace.get_tracer("broker.oauth")

    async def attempt(number: int) -> RawTokenResponse:
        return await _token_request(
            http,
            signer=signer,
            config=config,
            metadata=metadata,
            clock=clock,
            form=form,
            requested_scope=scope,
            attempt=number,
            tracer=the_tracer,
            assertion_clock=assertion_clock,
            skew=skew,
            assertion_extra=assertion_extra,
            observer=observer,
        )

    return await _with_retries(
        attempt, config, sleep=sleep, jitter=jitter, what="client_credentials"
    )


async def _with_retries(
    attempt: Callable[[int], Awaitable[RawTokenResponse]],
    config: ClientConfig,
    *,
    sleep: Sleep,
    jitter: Callable[[], float],
    what: str,
) -> RawTokenResponse:
    backoff = retry_backoff(config)
    number = 1
    while True:
        try:
            return await attempt(number)
        except AuthServerUnavailable as exc:
            if number >= config.refresh_max_attempts:
                raise
            if exc.retry_after is not None:
                # The server said when: wait exactly that, or give up if it is too long.
                if exc.retry_after > config.refresh_backoff_max:
                    raise
                delay = exc.retry_after
            else:
                delay = backoff.delay(number, jitter())
            _log.warning(
                "%s attempt %d of %d failed (%s, HTTP %s): retrying in %.1f s",
                what,
                number,
                config.refresh_max_attempts,
                exc.reason,
                exc.status_code if exc.status_code is not None else "-",
                delay,
            )
            await sleep(delay)
            number += 1
