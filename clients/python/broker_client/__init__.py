"""Client for the DOME token broker's gRPC API.

Depends only on grpcio and protobuf. The HTTP auth adapters live in
``broker_client.httpx_auth`` and ``broker_client.requests_auth`` (extras ``httpx`` and
``requests``) and are not imported here.
"""

from broker_client.async_token_source import AsyncTokenSource
from broker_client.backoff import Backoff
from broker_client.channel import aio_secure_channel, channel_options, credentials, secure_channel
from broker_client.client import AsyncBrokerClient, BrokerClient
from broker_client.errors import (
    Aborted,
    AlreadyExists,
    BrokerClientError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReauthorizationRequired,
    ResourceExhausted,
    SourceClosed,
    TokenExpired,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from broker_client.retry import service_config
from broker_client.token import AccessToken
from broker_client.token_source import TokenSource

__all__ = [
    "Aborted",
    "AccessToken",
    "AlreadyExists",
    "AsyncBrokerClient",
    "AsyncTokenSource",
    "Backoff",
    "BrokerClient",
    "BrokerClientError",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ReauthorizationRequired",
    "ResourceExhausted",
    "SourceClosed",
    "TokenExpired",
    "TokenSource",
    "Unauthenticated",
    "Unavailable",
    "aio_secure_channel",
    "channel_options",
    "credentials",
    "from_rpc_error",
    "secure_channel",
    "service_config",
]
