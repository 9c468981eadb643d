"""The grant stores with the real PKCS#11 sealer (AES-256-GCM in the SoftHSM2 test token)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from broker.errors import KeyStoreError
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.soft import SoftSealer
from broker.tokens.stores.postgres import PostgresGrantStore
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.clock import FakeClock
from tests.tokens.stores.helpers import (
    drop_pg_schema,
    make_grant,
    make_tokens,
    pg_schema_name,
    postgres_dsn_or_skip,
)

pytestmark = pytest.mark.softhsm


@pytest.fixture
def hsm_sealer_label(hsm_store: Pkcs11KeyStore) -> str:
    label = f"grant-kek-{secrets.token_hex(4)}"
    hsm_store.generate_sealing_key(label, secrets.token_bytes(4))
    return label


async def test_g09_sqlite_with_hsm_sealer_round_trips_and_hides_tokens(
    hsm_store: Pkcs11KeyStore, hsm_sealer_label: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "grants.db")
    sealer = hsm_store.sealer(hsm_sealer_label)
    store = await SqliteGrantStore.connect(path, sealer, FakeClock())
    try:
        await store.create(make_grant())
        rotated = await store.rotate(
            "g-1", make_tokens("hsm-secret", refresh="RT-hsm-secret"), expected_version=1
        )
        assert await store.get("g-1") == rotated
        assert (rotated.access_token, rotated.refresh_token) == ("AT-hsm-secret", "RT-hsm-secret")
        raw = b"".join(Path(path + s).read_bytes() for s in ("", "-wal"))
        for secret in (b"AT-hsm-secret", b"RT-hsm-secret", b"alice.pii@example.org"):
            assert secret not in raw
    finally:
        await store.close()
    # Without the token's key the rows do not open.
    other = await SqliteGrantStore.connect(
        path, SoftSealer(key_label=hsm_sealer_label), FakeClock()
    )
    try:
        with pytest.raises(KeyStoreError):
            await other.get("g-1")
    finally:
        await other.close()


async def test_postgres_with_hsm_sealer_and_concurrent_operations(
    hsm_store: Pkcs11KeyStore, hsm_sealer_label: str
) -> None:
    dsn = postgres_dsn_or_skip()
    schema = pg_schema_name()
    store = await PostgresGrantStore.connect(
        dsn, hsm_store.sealer(hsm_sealer_label), FakeClock(), schema=schema
    )
    try:
        grants = [make_grant(f"g-{i}") for i in range(8)]
        await asyncio.gather(*(store.create(g) for g in grants))  # sealing from worker threads
        got = await asyncio.gather(*(store.get(g.grant_id) for g in grants))
        assert got == grants
    finally:
        await store.close()
        drop_pg_schema(dsn, schema)
