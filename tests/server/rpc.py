"""Helpers the server tests share: the status of a call, an mTLS channel to a test server (the
self-stopping server is :func:`tests.server.conftest.started_harness`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from tests.server.pki import Issued

SERVER_NAME = "broker.test"  # the DNS name in the test server certificates


async def fails(call: Any) -> grpc.aio.AioRpcError:
    """The error ``call`` ends with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def code_of(call: Any) -> grpc.StatusCode:
    """The status ``call`` ends with, OK included."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def mtls_channel(
    port: int,
    client: Issued | None,
    server_ca_pem: bytes,
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> Any:
    """A grpc.aio channel to 127.0.0.1:``port`` as ``client`` (None: without a client
    certificate), trusting ``server_ca_pem``."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=server_ca_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        creds,
        options=[("grpc.ssl_target_name_override", SERVER_NAME), *options],
    )
