"""The token core's settings and injected parts, grouped into small frozen values.

:class:`broker.tokens.broker.TokenBroker` takes these instead of a long list of keyword
arguments: ``refresh`` (when a token is refreshed and how long it may be served),
``backoff`` (failed refreshes, :mod:`broker.backoff`), ``background`` (the scheduler's pass),
``reporting`` (observer, tracer, audit trail, persistence observer), ``identities`` (which
deployment identity refreshes which grant) and ``seams`` (test seams: rng, sleep, id factory).
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace

from broker.audit.trail import AuditTrail
from broker.backoff import BackoffPolicy
from broker.errors import InvalidArgument
from broker.tokens.emergency import PersistenceObserver
from broker.tokens.freshness import MIN_SERVE_TTL, REFRESH_THRESHOLD
from broker.tokens.observer import NullObserver, TokenBrokerObserver
from broker.tokens.schedule import (
    DEFAULT_RETRY_MARGIN,
    LifetimeKind,
    RefreshSchedule,
    RefreshTokenLifetime,
)
from broker.tokens.stores.deployment import DeploymentIdentity
from broker.tokens.stores.identities import IdentityRefresher

Sleep = Callable[[float], Awaitable[None]]


def new_grant_id() -> str:
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class RefreshPolicy:
    """When a token is refreshed (:mod:`broker.tokens.schedule`) and how long it is served.

    ``threshold``: a token with less left is STALE (refreshed in the background); ``jitter``
    spreads the due times; ``fraction`` (None: the threshold alone) of the token's life when a
    refresh is due; ``retry_margin``: failed refreshes go on until this long before the refresh
    token dies; ``lifetime``: the refresh token's lifetime when the AS sends none;
    ``min_serve_ttl``: a token with less left is never served.
    """

    threshold: float = REFRESH_THRESHOLD
    jitter: float = 0.1
    fraction: float | None = None
    retry_margin: float = DEFAULT_RETRY_MARGIN
    lifetime: RefreshTokenLifetime = field(
        default_factory=lambda: RefreshTokenLifetime(LifetimeKind.UNKNOWN)
    )
    min_serve_ttl: float = MIN_SERVE_TTL

    def __post_init__(self) -> None:
        if self.min_serve_ttl < 0:
            raise InvalidArgument("min_serve_ttl must not be negative")
        self.schedule()  # validates threshold, jitter, fraction and margin

    def schedule(self) -> RefreshSchedule:
        return RefreshSchedule(self.threshold, self.jitter, self.fraction, self.retry_margin)


REFRESH_BACKOFF = BackoffPolicy(initial=5.0, maximum=300.0, jitter=0.1)
"""Failed refreshes of one grant: first >= 5 s, doubling, up to 300 s, stretched by <= 10 %."""


@dataclass(frozen=True)
class BackgroundPolicy:
    """The scheduler's pass: every ``interval`` seconds, at most ``concurrency`` refreshes.
    ``status_interval``: how often the store is asked which grants changed status through
    other replicas (:mod:`broker.tokens.status_watch`): the bound on serving a grant revoked
    elsewhere."""

    interval: float = 15.0
    concurrency: int = 4
    status_interval: float = 2.0

    def __post_init__(self) -> None:
        if not self.interval > 0 or self.concurrency < 1 or not self.status_interval > 0:
            raise InvalidArgument("background intervals and concurrency must be positive")


@dataclass(frozen=True)
class Reporting:
    """Where the token core reports: metrics hooks, spans, the audit trail (H01: a grant is
    created only once ``grant.created`` is written) and the DEGRADED (unpersisted) set."""

    observer: TokenBrokerObserver = field(default_factory=NullObserver)
    tracer_provider: trace.TracerProvider | None = None
    audit: AuditTrail = field(default_factory=AuditTrail.disabled)
    persistence: PersistenceObserver | None = None

    def tracer(self) -> trace.Tracer:
        return trace.get_tracer("broker.tokens", tracer_provider=self.tracer_provider)


@dataclass(frozen=True)
class Identities:
    """The deployment identity this broker refreshes as (``active``: issuer and client_id of
    its refresher) and, during a key rotation, the other identities with their refreshers."""

    active: DeploymentIdentity
    others: Sequence[IdentityRefresher] = ()


@dataclass(frozen=True)
class Seams:
    """Injected randomness and time for tests: the back-off jitter's ``rng``, the scheduler's
    ``sleep``, the status watcher's ``status_sleep`` and the grant ``id_factory``."""

    rng: random.Random = field(default_factory=random.Random)  # jitter, not a secret
    sleep: Sleep = asyncio.sleep
    status_sleep: Sleep = asyncio.sleep
    id_factory: Callable[[], str] = new_grant_id
