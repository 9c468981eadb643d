"""Resource limits of the gRPC server and the retry policy its callers should use.

What one peer can make the server hold (message and metadata sizes, streams per connection,
keep-alive and handshake timers: :func:`server_options`), how many broker RPCs run at once
(:class:`ConcurrencyLimiter`, RESOURCE_EXHAUSTED beyond; TEST-CATALOGUE F01, F02, F06, F07) and
the client side of the same policy: retry UNAVAILABLE, never RESOURCE_EXHAUSTED
(:func:`client_retry_service_config`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from broker.errors import ConfigError
from broker.server.errors import REASON_OVERLOADED, status_trailers
from broker.server.interceptors import (
    StreamBehavior,
    UnaryBehavior,
    WrappingInterceptor,
    rewrap,
)
from broker.server.servicer import SERVICE_NAME

# The limiter's overload lines keep the logger name they had in the wiring module (log filters).
log = logging.getLogger("broker.server.app")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
DEFAULT_MAX_METADATA_BYTES = 16 * 1024
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
MIN_STREAMS_PER_CONNECTION = 1024
# RPCs never counted against ``max_concurrent_rpcs``: health must answer under overload (F06).
LIMIT_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def streams_per_connection(max_concurrent_rpcs: int) -> int:
    """The HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS the server advertises on each connection.

    Deliberately well above ``max_concurrent_rpcs``: the admission limit is enforced by
    :class:`ConcurrencyLimiter`, which answers excess calls with RESOURCE_EXHAUSTED (fail fast,
    logged, counted). A stream refused by the transport instead reaches the caller as UNAVAILABLE
    (RST_STREAM REFUSED_STREAM) with nothing logged, and grpcio 1.85 clients do not queue calls at
    the advertised limit, not even once the SETTINGS frame is known (measured: 1,000 calls on one
    ready channel with a limit of 100 or 256 streams -> 860 / 640 UNAVAILABLE). The stream limit
    therefore only bounds the transport state one connection can hold; handlers stay bounded by
    ``max_concurrent_rpcs`` whatever the peer does with RST_STREAM (F07, CVE-2023-44487), because
    a slot is held until the handler returns.
    """
    return max(MIN_STREAMS_PER_CONNECTION, 4 * max_concurrent_rpcs)


def server_options(
    *,
    max_message_bytes: int,
    max_concurrent_rpcs: int = 256,
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> list[tuple[str, int]]:
    """Channel arguments bounding what one peer can make the server hold (F01, F02, F07).

    The metadata soft and hard limits are equal, so the cut-off is deterministic (between the two
    gRPC rejects at random). ``handshake_timeout`` closes connections that never finish TLS.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.max_metadata_size", max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", max_metadata_bytes),
        ("grpc.max_concurrent_streams", streams_per_connection(max_concurrent_rpcs)),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 30_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", 300_000),
        ("grpc.max_connection_age_ms", 3_600_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
        ("grpc.server_handshake_timeout_ms", max(1, round(handshake_timeout * 1000))),
        # gRPC sets SO_REUSEPORT by default: a second process binding a port already served
        # (another broker, a misconfigured replica) would start and silently take a share of
        # its connections. Without it the second start fails (address in use).
        ("grpc.so_reuseport", 0),
    ]


class ConcurrencyLimiter(WrappingInterceptor):
    """At most ``limit`` broker RPCs at once; the excess fails fast with RESOURCE_EXHAUSTED (F06).

    Replaces grpc.aio's ``maximum_concurrent_rpcs``, which counts every RPC, health checks
    included, so an overloaded server would also fail its probes. Here health RPCs
    (:data:`LIMIT_EXEMPT_PREFIXES`) are never counted nor refused. A slot is taken when the
    handler starts (after the request was received and decoded, so a rejected message cannot
    leak one) and given back when it returns, fails or is cancelled; a ``WatchAccessToken``
    stream holds its slot while it is open. One warning is logged when an overload starts and
    one line when it ends, with the number of rejected calls. Streaming handlers must be async
    generators (as the broker's and grpcio-reflection's aio servicers are). Runs on the server's
    event loop only, so the counters need no lock.
    """

    unwrapped_prefixes = LIMIT_EXEMPT_PREFIXES

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ConfigError("max_concurrent_rpcs must be at least 1")
        self.limit = limit
        self.active = 0
        self.rejected = 0  # since start
        self._episode_rejected = 0

    @property
    def overloaded(self) -> bool:
        return self._episode_rejected > 0

    def _acquire(self) -> bool:
        if self.active >= self.limit:
            self.rejected += 1
            self._episode_rejected += 1
            if self._episode_rejected == 1:
                log.warning(
                    "gRPC overload: %d RPCs in flight, rejecting new calls with RESOURCE_EXHAUSTED",
                    self.limit,
                )
            return False
        self.active += 1
        return True

    def _release(self) -> None:
        self.active -= 1
        if self._episode_rejected and self.active < self.limit:
            log.warning("gRPC overload over: %d calls were rejected", self._episode_rejected)
            self._episode_rejected = 0

    def wrap(self, method: str, handler: Any) -> Any:
        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def limited(request: Any, context: Any) -> Any:
                if not self._acquire():
                    await _abort_overloaded(context)
                try:
                    return await behavior(request, context)
                finally:
                    self._release()

            return limited

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def limited(request: Any, context: Any) -> AsyncIterator[Any]:
                if not self._acquire():
                    await _abort_overloaded(context)
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    self._release()

            return limited

        return rewrap(handler, unary=unary, stream=stream)


_OVERLOADED = "server overloaded, retry later with backoff"
_OVERLOADED_TRAILERS = status_trailers(
    grpc.StatusCode.RESOURCE_EXHAUSTED, _OVERLOADED, REASON_OVERLOADED, {"retryable": "true"}
)


async def _abort_overloaded(context: Any) -> None:
    await context.abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED, _OVERLOADED, trailing_metadata=_OVERLOADED_TRAILERS
    )


def client_retry_service_config(*, max_attempts: int = 4) -> str:
    """The gRPC service config callers should set (channel option ``grpc.service_config``).

    Retries UNAVAILABLE (HSM or Verifier briefly down, connection lost, a stream refused by a
    transport) with exponential backoff and jitter, never RESOURCE_EXHAUSTED: an overloaded
    broker must not be hit again at once. ``retryThrottling`` stops retries when most calls fail.
    Every broker RPC is safe to retry: token reads are idempotent, a repeated StartAuthorization
    only opens a second login.
    """
    if not 2 <= max_attempts <= 5:  # gRPC caps maxAttempts at 5
        raise ConfigError("max_attempts must be between 2 and 5")
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE_NAME}],
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    )
