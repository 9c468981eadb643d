"""The gRPC retry policy callers of the broker should use, as data.

A copy of the broker's recommendation (``broker.server.limits.client_retry_service_config``; a test
keeps the two equal): retry UNAVAILABLE only, with exponential backoff and jitter, never
RESOURCE_EXHAUSTED (an overloaded broker must not be hit again at once), with retry throttling.
Every broker RPC is safe to retry.
"""

from __future__ import annotations

import json
from typing import Any

SERVICE_NAME = "broker.v1.TokenBroker"
DEFAULT_MAX_ATTEMPTS = 4
MIN_ATTEMPTS = 2
MAX_ATTEMPTS = 5  # gRPC caps maxAttempts at 5

RETRY_POLICY: dict[str, Any] = {
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
RETRY_THROTTLING: dict[str, Any] = {"maxTokens": 10, "tokenRatio": 0.1}


def service_config(*, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> str:
    """The JSON for the channel option ``grpc.service_config``."""
    if not MIN_ATTEMPTS <= max_attempts <= MAX_ATTEMPTS:
        raise ValueError(f"max_attempts must be between {MIN_ATTEMPTS} and {MAX_ATTEMPTS}")
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE_NAME}],
                    "retryPolicy": {"maxAttempts": max_attempts, **RETRY_POLICY},
                }
            ],
            "retryThrottling": RETRY_THROTTLING,
        }
    )
