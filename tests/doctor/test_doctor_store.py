"""``broker doctor`` store check and the deployment binding (issue 8 §3): a store of another
deployment fails naming both sides; an empty or foreign file fails and is left unchanged; the
doctor compares but never records an identity."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker.doctor.result import Status
from broker.keys.soft import SoftSealer
from broker.tokens.model import GrantStatus
from broker.tokens.stores.deployment import DeploymentIdentity
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.doctor.conftest import Keys
from tests.doctor.helpers import ISSUER, Deployment, FakeVerifier
from tests.doctor.test_doctor import doctor
from tests.tokens.stores.helpers import (
    drop_pg_schema,
    make_grant,
    pg_schema_name,
    postgres_dsn_or_skip,
)

pytestmark = pytest.mark.softhsm

OTHER_ISSUER = "https://other-verifier.example"


async def bound_store(path: Path, clock: FakeClock, identity: DeploymentIdentity) -> None:
    store = await SqliteGrantStore.connect(str(path), SoftSealer(), clock, identity=identity)
    await store.create(make_grant("g-1", issuer=identity.issuer, client_id=identity.client_id))
    await store.close()


async def test_store_of_another_deployment_fails_naming_both_sides(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys, tmp_path: Path
) -> None:
    path = tmp_path / "foreign.db"
    other = DeploymentIdentity(issuer=OTHER_ISSUER, client_id=keys.did, did=keys.did)
    await bound_store(path, clock, other)
    deployment.sections["store"]["path"] = str(path)
    found = await doctor(deployment, verifier, clock)
    result = found["store"]
    assert result.status is Status.FAIL
    assert "[deployment_mismatch]" in result.detail
    assert OTHER_ISSUER in result.detail and ISSUER in result.detail
    assert keys.did in result.detail
    assert "RT-g-1" not in result.detail


async def test_store_bound_to_this_deployment_is_ok(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys
) -> None:
    found = await doctor(deployment, verifier, clock)
    assert found["store"].status is Status.OK, found["store"].detail
    assert "bound to" in found["store"].detail and keys.did in found["store"].detail


async def test_zero_length_file_fails_and_is_left_unchanged(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "empty.db"
    path.touch(mode=0o600)
    deployment.sections["store"]["path"] = str(path)
    found = await doctor(deployment, verifier, clock)
    assert found["store"].status is Status.FAIL
    assert "empty (0 bytes)" in found["store"].detail
    assert "[store_unusable]" in found["store"].detail
    assert path.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("empty")) == ["empty.db"]


async def test_unbound_store_passes_with_a_note_and_the_doctor_records_nothing(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "unbound.db"
    store = await SqliteGrantStore.connect(str(path), SoftSealer(), clock)
    await store.close()
    deployment.sections["store"]["path"] = str(path)
    found = await doctor(deployment, verifier, clock)
    assert found["store"].status is Status.OK, found["store"].detail
    assert "no deployment identity recorded yet" in found["store"].detail
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM deployment_identities").fetchone()
    conn.close()
    assert rows == (0,)


@pytest.mark.postgres
async def test_postgres_store_of_another_deployment_fails_naming_both_sides(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys
) -> None:
    from broker.doctor.runner import DoctorOptions
    from broker.tokens.stores.postgres import PostgresGrantStore

    dsn = postgres_dsn_or_skip()
    schema = pg_schema_name()
    other = DeploymentIdentity(issuer=OTHER_ISSUER, client_id=keys.did, did=keys.did)
    try:
        store = await PostgresGrantStore.connect(
            dsn, SoftSealer(), clock, schema=schema, identity=other
        )
        await store.close()
        deployment.sections["store"] = {"kind": "postgres", "dsn": dsn}
        found = await doctor(deployment, verifier, clock, DoctorOptions(pg_schema=schema))
    finally:
        drop_pg_schema(dsn, schema)
    result = found["store"]
    assert result.status is Status.FAIL
    assert "[deployment_mismatch]" in result.detail
    assert OTHER_ISSUER in result.detail and ISSUER in result.detail


async def test_store_check_prints_the_outage_budget_read_from_the_store(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys, tmp_path: Path
) -> None:
    path = tmp_path / "budget.db"
    ours = DeploymentIdentity(issuer=ISSUER, client_id=keys.did, did=keys.did)
    store = await SqliteGrantStore.connect(str(path), SoftSealer(), clock, identity=ours)
    now = clock.now()
    owner = {"issuer": ISSUER, "client_id": keys.did}
    await store.create(make_grant("g-1", refresh_expires_at=now + 1800, **owner))
    # no stored expiry: [oauth].refresh_token_lifetime "access" (default) -> the access expiry
    await store.create(make_grant("g-2", access_expires_at=now + 900, **owner))
    await store.create(make_grant("g-3", refresh_expires_at=now + 60, **owner))
    await store.set_status("g-3", GrantStatus.REVOKED, reason="revoked")  # not counted
    await store.close()
    deployment.sections["store"]["path"] = str(path)
    found = await doctor(deployment, verifier, clock)
    assert found["store"].status is Status.OK, found["store"].detail
    assert "outage budget 900 s" in found["store"].detail
    assert "among 2 active grants" in found["store"].detail
    assert "RT-g-" not in found["store"].detail and "AT-g-" not in found["store"].detail
