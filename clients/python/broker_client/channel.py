"""Channels to the broker over mutual TLS, with the recommended retry policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from broker_client.retry import DEFAULT_MAX_ATTEMPTS, service_config

StrPath = str | Path


def credentials(*, ca: StrPath, cert: StrPath, key: StrPath) -> grpc.ChannelCredentials:
    """mTLS credentials from PEM files: the CA bundle that signed the broker's server
    certificate, the caller's certificate (chain) and its private key. The certificate must
    carry exactly one URI SAN, the caller's SPIFFE ID."""
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes(),
        certificate_chain=Path(cert).read_bytes(),
    )


def channel_options(
    *,
    server_name: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    extra: Sequence[tuple[str, Any]] = (),
) -> list[tuple[str, Any]]:
    """The channel arguments: the retry service config, and ``server_name`` when the target's
    host is not the name in the broker's certificate (e.g. an IP address)."""
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config(max_attempts=max_attempts)),
        ("grpc.enable_retries", 1),
    ]
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    options.extend(extra)
    return options


def secure_channel(
    target: str,
    *,
    ca: StrPath,
    cert: StrPath,
    key: StrPath,
    server_name: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A blocking-API channel (``grpc.secure_channel``) to ``target`` (``host:port``)."""
    return grpc.secure_channel(
        target,
        credentials(ca=ca, cert=cert, key=key),
        options=channel_options(
            server_name=server_name, max_attempts=max_attempts, extra=extra_options
        ),
    )


def aio_secure_channel(
    target: str,
    *,
    ca: StrPath,
    cert: StrPath,
    key: StrPath,
    server_name: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An asyncio channel (``grpc.aio.secure_channel``) to ``target`` (``host:port``)."""
    return grpc.aio.secure_channel(
        target,
        credentials(ca=ca, cert=cert, key=key),
        options=channel_options(
            server_name=server_name, max_attempts=max_attempts, extra=extra_options
        ),
    )
