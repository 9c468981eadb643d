from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from broker.keys.soft import SoftKeyStore, SoftSigner
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import ServerMetadata, parse_metadata
from tests.clock import FakeClock
from tests.oauth.fakeas import ISSUER, REDIRECT_URI, FakeAS, metadata_doc


@pytest.fixture
def signer() -> SoftSigner:
    store = SoftKeyStore()
    store.generate("client", b"\x01")
    return store.signer("client")


@pytest.fixture
def config(signer: SoftSigner) -> ClientConfig:
    return ClientConfig(issuer=ISSUER, client_id=signer.kid, redirect_uri=REDIRECT_URI)


@pytest.fixture
def metadata(config: ClientConfig) -> ServerMetadata:
    return parse_metadata(metadata_doc(), config)


@pytest.fixture
def fake_as() -> FakeAS:
    return FakeAS()


@pytest.fixture
def clock() -> FakeClock:
    import time

    return FakeClock(now=float(int(time.time())))


@pytest.fixture
async def http(fake_as: FakeAS) -> AsyncIterator[httpx.AsyncClient]:
    async with fake_as.client() as client:
        yield client
