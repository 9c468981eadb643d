from __future__ import annotations

import pytest

from broker.keys.soft import SoftKeyStore, SoftSigner
from broker.login import LoginService, LoginSettings
from tests.clock import FakeClock
from tests.login.fakes import BASE_URL, FakeClient, FakeSink, client_config


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def signer() -> SoftSigner:
    store = SoftKeyStore()
    store.generate("client", b"\x01")
    return store.signer("client")


@pytest.fixture
def fake_client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def sink(clock: FakeClock) -> FakeSink:
    return FakeSink(clock=clock)


@pytest.fixture
def service(
    fake_client: FakeClient, signer: SoftSigner, sink: FakeSink, clock: FakeClock
) -> LoginService:
    return LoginService(
        fake_client,
        client_config(signer.kid),
        signer,
        sink,
        clock,
        settings=LoginSettings(BASE_URL),
    )
