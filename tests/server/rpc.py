"""Helpers the server tests share: the status of a call, a harness that stops itself, an mTLS
channel to a test server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.server.conftest import Harness, make_harness
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


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **kwargs: Any) -> AsyncIterator[Harness]:
    """:func:`tests.server.conftest.make_harness` (same arguments), stopped on exit with its
    channels closed."""
    h, provider = await make_harness(tmp_path, **kwargs)
    try:
        yield h
    finally:
        for ch in h.channels:
            await ch.close()
        await h.running.stop(None)
        provider.shutdown()


def mtls_channel(
    port: int,
    client: Issued,
    server_ca_pem: bytes,
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> Any:
    """A grpc.aio channel to 127.0.0.1:``port`` as ``client``, trusting ``server_ca_pem``."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=server_ca_pem,
        private_key=client.key_pem,
        certificate_chain=client.cert_pem,
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        creds,
        options=[("grpc.ssl_target_name_override", SERVER_NAME), *options],
    )
