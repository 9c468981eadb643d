"""PostgreSQL grant store: only a missing or empty schema is initialised; a schema with tables
that are not ours is refused untouched; a schema-1 store is migrated and adopted only when every
grant is this deployment's (issue 8 §3). Every test uses its own schema, dropped at the end."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from broker.errors import DeploymentMismatch, StoreUnusable
from broker.keys.soft import SoftSealer
from broker.tokens.stores.deployment import DeploymentIdentity, RecordedHow
from broker.tokens.stores.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresGrantStore
from broker.tokens.stores.sealing import COLUMNS, seal_grant
from tests.clock import FakeClock
from tests.tokens.stores.helpers import (
    drop_pg_schema,
    make_grant,
    pg_schema_name,
    postgres_dsn_or_skip,
)

pytestmark = pytest.mark.postgres

OURS = DeploymentIdentity(
    issuer="https://verifier.example", client_id="did:key:zDnaeClient", did="did:key:zDnaeClient"
)

V1_COLUMNS = COLUMNS[: COLUMNS.index("access_issued_at")]  # schema 3 added the rest


@pytest.fixture
def dsn() -> str:
    return postgres_dsn_or_skip()


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    name = pg_schema_name()
    yield name
    drop_pg_schema(dsn, name)


def tables_of(dsn: str, schema: str) -> dict[str, int]:
    """Table name -> row count."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [
            str(r[0])
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            ).fetchall()
        ]
        counts = {}
        for name in names:
            row = conn.execute(
                sql.SQL("SELECT COUNT(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name)
                )
            ).fetchone()
            counts[name] = int(row[0]) if row else 0
    return counts


def write_schema_1_store(dsn: str, schema: str, sealer: SoftSealer, issuer: str) -> None:
    """A schema as the previous broker left it: version 1, no identity record, one grant."""
    ident = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            ).format(ident)
        )
        version, statements = MIGRATIONS[0]
        assert version == 1
        for statement in statements:
            conn.execute(sql.SQL(statement).format(schema=ident))
        conn.execute(sql.SQL("INSERT INTO {}.schema_migrations VALUES (1, 0)").format(ident))
        row = seal_grant(sealer, make_grant("g-1", issuer=issuer, client_id=OURS.client_id))
        conn.execute(
            sql.SQL("INSERT INTO {}.grants ({}) VALUES ({})").format(
                ident,
                sql.SQL(", ").join(sql.Identifier(c) for c in V1_COLUMNS),
                sql.SQL(", ").join(sql.Placeholder() for _ in V1_COLUMNS),
            ),
            row.values()[: len(V1_COLUMNS)],
        )


async def test_schema_with_foreign_tables_is_refused_and_left_alone(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL("CREATE TABLE {}.invoices (id INTEGER PRIMARY KEY)").format(
                sql.Identifier(schema)
            )
        )
        conn.execute(sql.SQL("INSERT INTO {}.invoices VALUES (7)").format(sql.Identifier(schema)))
    store = PostgresGrantStore(dsn, SoftSealer(), FakeClock(), schema=schema, identity=OURS)
    with pytest.raises(StoreUnusable, match="not a grant store") as info:
        await store.open()
    await store.close()
    assert info.value.retryable is False
    assert schema in str(info.value) and "invoices" in str(info.value)
    assert tables_of(dsn, schema) == {"invoices": 1}


async def test_existing_empty_schema_is_initialised(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    store = await PostgresGrantStore.connect(
        dsn, SoftSealer(), FakeClock(), schema=schema, identity=OURS
    )
    try:
        (recorded,) = await store.identities()
        assert (recorded.identity, recorded.how) == (OURS, RecordedHow.CREATED)
    finally:
        await store.close()


async def test_schema_1_store_of_this_deployment_is_migrated_and_adopted_with_a_log_line(
    dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    sealer = SoftSealer()
    write_schema_1_store(dsn, schema, sealer, OURS.issuer)
    with caplog.at_level(logging.WARNING, logger="broker.tokens.stores.deployment"):
        store = await PostgresGrantStore.connect(
            dsn, sealer, FakeClock(), schema=schema, identity=OURS
        )
    try:
        assert store.adopted
        (recorded,) = await store.identities()
        assert (recorded.identity, recorded.how) == (OURS, RecordedHow.ADOPTED)
        assert await store.schema_version() == SCHEMA_VERSION
        assert (await store.get("g-1")).refresh_token == "RT-g-1-v1-plaintext"
    finally:
        await store.close()
    assert any("had no deployment identity" in r.getMessage() for r in caplog.records)


async def test_schema_1_store_of_another_deployment_is_refused_and_not_migrated(
    dsn: str, schema: str
) -> None:
    write_schema_1_store(dsn, schema, SoftSealer(), "https://other-verifier.example")
    store = PostgresGrantStore(dsn, SoftSealer(), FakeClock(), schema=schema, identity=OURS)
    with pytest.raises(DeploymentMismatch) as info:
        await store.open()
    await store.close()
    assert "other-verifier" in str(info.value) and OURS.issuer in str(info.value)
    assert tables_of(dsn, schema) == {"schema_migrations": 1, "grants": 1}  # rolled back
