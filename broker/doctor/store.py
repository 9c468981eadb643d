"""Grant store checks: reachable and migrated, with the durability settings serve relies on.

SQLite (TEST-CATALOGUE G03): the file opens, ``journal_mode=WAL``, ``synchronous=FULL`` (2),
schema at this broker's version. A missing file is a warning: serve creates it, the doctor
does not. PostgreSQL: connect, schema version, ``ping``. Opening a store applies pending
migrations exactly as serve does at start-up; a schema newer than this broker fails.

Deployment binding: with our did known (the HSM checks read it), the store is opened with
this deployment's identity (``[oauth].issuer``, client_id = did) without recording it: a store
of another deployment fails naming both sides (DeploymentMismatch); an existing file or schema
that is not a grant store fails (StoreUnusable). A store that has no identity yet passes with a
note (serve records it at its next start, after the same check of every grant's issuer and
client). Without our did the identity is not compared, and the result says so (warn).

The doctor never reads a grant, so the store gets a sealer that refuses to seal or open; the
outage budget (seconds until the earliest refresh-token expiry among active grants, see
:mod:`broker.tokens.schedule`) comes from the clear expiry columns.
"""

from __future__ import annotations

import os

from broker.clock import Clock
from broker.config import Settings
from broker.doctor.result import CheckResult, Status, fail, failed, ok, warn
from broker.errors import BrokerError, KeyStoreError
from broker.tokens.schedule import RefreshTokenLifetime, describe_budget
from broker.tokens.stores import sqlite
from broker.tokens.stores.deployment import DeploymentIdentity
from broker.tokens.stores.postgres_driver import require_postgres_driver

NAME = "store"


class RefusingSealer:
    """A :class:`broker.keys.api.Sealer` for a store that must not touch any token."""

    @property
    def key_label(self) -> str:
        return "doctor-no-sealing"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        raise KeyStoreError("the doctor does not seal grants")

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        raise KeyStoreError("the doctor does not open grants")


async def check_store(
    settings: Settings, clock: Clock, *, pg_schema: str = "broker", did: str | None = None
) -> CheckResult:
    """``store``. ``pg_schema`` is the PostgreSQL schema serve uses (tests pass their own);
    ``did`` is our did:key when the HSM checks could read it."""
    s = settings.store
    identity = (
        None
        if did is None
        else DeploymentIdentity(issuer=settings.oauth.issuer, client_id=did, did=did)
    )
    try:
        if s.kind == "postgres":
            assert s.dsn is not None  # load_settings requires it
            result = await _postgres(
                s.dsn, clock, pg_schema, identity, settings.oauth.refresh_token_lifetime
            )
        else:
            assert s.path is not None  # load_settings requires it
            result = await _sqlite(
                str(s.path), clock, identity, settings.oauth.refresh_token_lifetime
            )
    except BrokerError as exc:
        return failed(NAME, exc, f"{s.kind} store")
    return _with_binding(result, identity)


def _with_binding(result: CheckResult, identity: DeploymentIdentity | None) -> CheckResult:
    if result.status is not Status.OK:
        return result
    if identity is None:
        return warn(NAME, f"{result.detail}; deployment identity not compared (our did is unknown)")
    return result


def _binding_note(adoptable: bool, identity: DeploymentIdentity | None) -> str:
    if identity is None:
        return ""
    if adoptable:
        return (
            f"; no deployment identity recorded yet (serve records {identity.describe()} "
            "at its next start)"
        )
    return f"; bound to {identity.describe()}"


async def _sqlite(
    path: str,
    clock: Clock,
    identity: DeploymentIdentity | None,
    lifetime: RefreshTokenLifetime,
) -> CheckResult:
    if not os.path.exists(path):
        parent = os.path.dirname(path) or "."
        if not os.access(parent, os.W_OK | os.X_OK):
            return fail(NAME, f"sqlite: {path} does not exist and {parent} is not writable")
        return warn(NAME, f"sqlite: {path} does not exist yet (serve creates it)")
    store = await sqlite.SqliteGrantStore.connect(
        path, RefusingSealer(), clock, identity=identity, record_identity=False
    )
    try:
        await store.ping()
        pragmas = await store.storage_settings()
        unbound = not await store.identities()
        budget = describe_budget(await store.expiries(), lifetime, clock.now())
    finally:
        await store.close()
    problems = []
    if pragmas.get("journal_mode", "").lower() != "wal":
        problems.append(f"journal_mode={pragmas.get('journal_mode')} (want wal)")
    if pragmas.get("synchronous") != "2":
        problems.append(f"synchronous={pragmas.get('synchronous')} (want 2, FULL)")
    version = pragmas.get("schema_version", "")
    if version != str(sqlite.SCHEMA_VERSION):
        problems.append(f"schema version {version or 'none'} (want {sqlite.SCHEMA_VERSION})")
    if problems:
        return fail(NAME, "sqlite: " + ", ".join(problems))
    return ok(
        NAME,
        f"sqlite {path}: WAL, synchronous=FULL, schema version {sqlite.SCHEMA_VERSION}"
        + _binding_note(unbound, identity)
        + f"; {budget}",
    )


async def _postgres(
    dsn: str,
    clock: Clock,
    schema: str,
    identity: DeploymentIdentity | None,
    lifetime: RefreshTokenLifetime,
) -> CheckResult:
    require_postgres_driver()  # psycopg is the optional `postgres` extra
    from broker.tokens.stores import postgres  # noqa: PLC0415

    store = postgres.PostgresGrantStore(
        dsn, RefusingSealer(), clock, schema=schema, identity=identity, record_identity=False
    )
    try:
        await store.open()
        version = await store.schema_version()
        await store.ping()
        unbound = not await store.identities()
        budget = describe_budget(await store.expiries(), lifetime, clock.now())
    finally:
        await store.close()
    if version != postgres.SCHEMA_VERSION:
        return fail(
            NAME, f"postgres schema {schema!r} at version {version}, want {postgres.SCHEMA_VERSION}"
        )
    return ok(
        NAME,
        f"postgres schema {schema!r} reachable, schema version {version}"
        + _binding_note(unbound, identity)
        + f"; {budget}",
    )
