"""``broker doctor`` shows where a client-key rotation stands (``store.rotation``): the recorded
identities with role, state and key, the one ``[key] uri`` names; warns when ``[key] uri`` is not
the store's active identity or a prepared identity waits too long; fails when ``[key] uri``
names a retired identity. The real doctor over the SoftHSM deployment of ``conftest.py`` and its
SQLite grant store (as serve leaves it), the rotation recorded as ``broker keys rotate`` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.doctor.result import CheckResult, Status, exit_code
from broker.doctor.rotation import NAME, assess
from broker.doctor.runner import ALL_NAMES, DoctorOptions, run_doctor
from broker.keys.soft import SoftSealer
from broker.tokens.stores.deployment import (
    DeploymentIdentity,
    IdentityRole,
    IdentityState,
    RecordedHow,
    RecordedIdentity,
)
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.doctor.conftest import Keys
from tests.doctor.helpers import ISSUER, Deployment, FakeVerifier

pytestmark = pytest.mark.softhsm

NEW_DID = "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY"
NEW_URI = "pkcs11:token=doctor;object=client-next;id=%09"
DAY = 86_400.0
NEW = DeploymentIdentity(issuer=ISSUER, client_id=NEW_DID, did=NEW_DID)


async def rotation_check(
    dep: Deployment,
    verifier: FakeVerifier,
    clock: FakeClock,
    *,
    prepared_warn_days: float = DoctorOptions.prepared_warn_days,
) -> tuple[CheckResult, list[CheckResult]]:
    options = DoctorOptions(prepared_warn_days=prepared_warn_days)
    async with verifier.client() as http:
        results = await run_doctor(dep.write(), http=http, clock=clock, options=options)
    found = {r.name: r for r in results}
    return found[NAME], results


async def ledger(tmp_path: Path, clock: FakeClock) -> SqliteGrantStore:
    return await SqliteGrantStore.connect(str(tmp_path / "grants.db"), SoftSealer(), clock)


def mine(keys: Keys) -> DeploymentIdentity:
    return DeploymentIdentity(issuer=ISSUER, client_id=keys.did, did=keys.did)


def test_rotation_check_runs_after_the_store_check() -> None:
    assert ALL_NAMES.index(NAME) == ALL_NAMES.index("store") + 1


async def test_no_rotation_is_ok_and_names_the_configured_identity(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys
) -> None:
    result, _ = await rotation_check(deployment, verifier, clock)
    assert result.status is Status.OK, result.detail
    assert "no rotation in progress" in result.detail
    assert f"active {keys.did} (primary; key" in result.detail
    assert "<- [key] uri" in result.detail


async def test_prepared_identity_is_listed_then_warns_after_n_days(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys, tmp_path: Path
) -> None:
    store = await ledger(tmp_path, clock)
    try:
        await store.add_identity(NEW, state=IdentityState.PREPARED, key_uri=NEW_URI)
    finally:
        await store.close()
    result, _ = await rotation_check(deployment, verifier, clock, prepared_warn_days=7)
    assert result.status is Status.OK, result.detail
    assert f"prepared {NEW_DID} (added; key {NEW_URI})" in result.detail
    assert f"active {keys.did} (primary; key" in result.detail

    clock.advance(8 * DAY)
    result, _ = await rotation_check(deployment, verifier, clock, prepared_warn_days=7)
    assert result.status is Status.WARN, result.detail
    assert f"identity {NEW_DID} has been prepared for 8 days (over 7)" in result.detail
    assert "rotate activate" in result.detail


async def test_key_uri_not_the_active_identity_warns(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys, tmp_path: Path
) -> None:
    """After ``rotate activate``: the store's active identity is the new key, [key] uri still
    names the old one (a replica not restarted with the new key)."""
    store = await ledger(tmp_path, clock)
    try:
        await store.add_identity(NEW, state=IdentityState.PREPARED, key_uri=NEW_URI)
        await store.set_identity(mine(keys), state=IdentityState.RETIRING)
        await store.set_identity(NEW, state=IdentityState.ACTIVE)
    finally:
        await store.close()
    result, results = await rotation_check(deployment, verifier, clock)
    assert result.status is Status.WARN, result.detail
    assert f"[key] uri names the retiring identity {keys.did}" in result.detail
    assert f"not the store's active one ({NEW_DID})" in result.detail
    assert f"set [key] uri to {NEW_URI} and restart every replica" in result.detail
    assert f"retiring {keys.did} (primary; key" in result.detail
    assert exit_code(results) == 0


async def test_key_uri_naming_a_retired_identity_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys, tmp_path: Path
) -> None:
    store = await ledger(tmp_path, clock)
    try:
        await store.add_identity(NEW, state=IdentityState.ACTIVE, key_uri=NEW_URI)
        await store.set_identity(mine(keys), state=IdentityState.RETIRED)
    finally:
        await store.close()
    result, results = await rotation_check(deployment, verifier, clock)
    assert result.status is Status.FAIL, result.detail
    assert f"[key] uri names the retired identity {keys.did}" in result.detail
    assert f"set [key] uri to the active key {NEW_URI}" in result.detail
    assert exit_code(results) == 1


async def test_missing_store_file_is_no_rotation(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    deployment.sections["store"]["path"] = str(tmp_path / "none-yet.db")
    result, _ = await rotation_check(deployment, verifier, clock)
    assert result.status is Status.OK and "no grant store yet" in result.detail


async def test_unreadable_store_skips(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    bad = tmp_path / "not-a-store.db"
    bad.write_bytes(b"this is not a database" * 100)
    deployment.sections["store"]["path"] = str(bad)
    result, _ = await rotation_check(deployment, verifier, clock)
    assert result.status is Status.SKIP and "see 'store'" in result.detail


def recorded(
    identity: DeploymentIdentity, state: IdentityState, key_uri: str | None
) -> RecordedIdentity:
    return RecordedIdentity(
        identity, IdentityRole.ADDED, RecordedHow.CEREMONY, 6, 0.0, state=state, key_uri=key_uri
    )


def test_without_our_did_the_configured_identity_is_found_by_key_uri() -> None:
    old = DeploymentIdentity(issuer=ISSUER, client_id="did:key:zOld", did="did:key:zOld")
    ledger_rows = [
        recorded(old, IdentityState.RETIRING, "pkcs11:token=t;object=client;id=%01"),
        recorded(NEW, IdentityState.ACTIVE, "pkcs11:token=t;object=next;id=%02"),
    ]
    result = assess(
        ledger_rows,
        configured_did=None,
        configured_uri="pkcs11:token=t;object=next;id=%02?pin-source=file:/run/pin",
        now=0.0,
        prepared_warn_days=14,
    )
    assert result.status is Status.OK, result.detail
    assert f"active {NEW_DID} (added; key pkcs11:token=t;object=next;id=%02) <- [key] uri" in (
        result.detail
    )
    assert "rotation in progress" in result.detail and "pin-source" not in result.detail
