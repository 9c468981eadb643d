"""Doctor fixtures: a client key and a sealing key in the session SoftHSM token (destroyed at
the end of the module run), a deployment on disk around them, and a fake Verifier."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.soft import SoftSealer
from broker.tokens.stores.deployment import DeploymentIdentity
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.conftest import SoftHsmEnv
from tests.doctor.helpers import ISSUER, Deployment, FakeVerifier, make_deployment


@dataclass(frozen=True)
class Keys:
    client: str
    sealing: str
    did: str


@pytest.fixture(scope="package")
def keys(hsm_store: Pkcs11KeyStore) -> Iterator[Keys]:
    suffix = secrets.token_hex(4)
    client, sealing = f"doctor-client-{suffix}", f"doctor-seal-{suffix}"
    info = hsm_store.generate(client, secrets.token_bytes(4))
    hsm_store.generate_sealing_key(sealing, secrets.token_bytes(4))
    try:
        yield Keys(client, sealing, info.did)
    finally:
        hsm_store.delete(client)
        hsm_store.delete(sealing)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def deployment(
    tmp_path: Path, softhsm_env: SoftHsmEnv, keys: Keys, clock: FakeClock
) -> Deployment:
    dep = make_deployment(
        tmp_path,
        now=clock.now(),
        token_label=softhsm_env.token_label,
        key_label=keys.client,
        sealing_label=keys.sealing,
        pin_file=softhsm_env.pin_file,
    )
    # The grant database as serve leaves it (created, migrated, bound to this deployment).
    identity = DeploymentIdentity(issuer=ISSUER, client_id=keys.did, did=keys.did)
    store = await SqliteGrantStore.connect(
        str(tmp_path / "grants.db"), SoftSealer(), clock, identity=identity
    )
    await store.close()
    return dep


@pytest.fixture
def verifier(clock: FakeClock) -> FakeVerifier:
    return FakeVerifier(clock)
