"""The grant store of ``broker serve``, opened from ``[store]`` and bound to this deployment.

The rotation ceremony opens the same store (unbound) through here. No gRPC.
"""

from __future__ import annotations

from broker.clock import Clock
from broker.config import Settings
from broker.errors import ConfigError
from broker.keys.api import Sealer
from broker.oauth.config import ClientConfig
from broker.tokens.stores.deployment import DeploymentIdentity
from broker.tokens.stores.due import DEFAULT_DUE_RULE, DueRule
from broker.tokens.stores.identities import LedgerStore
from broker.tokens.stores.postgres_driver import require_postgres_driver
from broker.tokens.stores.sqlite import SqliteGrantStore


def deployment_identity(config: ClientConfig, did: str) -> DeploymentIdentity:
    """The identity a grant store is bound to: the OAuth client's issuer and client_id, our did."""
    return DeploymentIdentity(issuer=config.issuer, client_id=config.client_id, did=did)


async def open_store(
    settings: Settings,
    sealer: Sealer,
    clock: Clock,
    identity: DeploymentIdentity | None,
    *,
    record_identity: bool = True,
    due_rule: DueRule = DEFAULT_DUE_RULE,
) -> LedgerStore:
    """Open the configured store bound to ``identity`` (refuses another deployment's store:
    DeploymentMismatch; an existing file or schema that is not a store: StoreUnusable).
    ``due_rule``: how the store computes a grant's next due time (serve: the token core's
    configured schedule, so the background pass reads only the due grants)."""
    s = settings.store
    if s.kind == "postgres":
        if s.dsn is None:
            raise ConfigError("[store].dsn is required for the postgres store")
        require_postgres_driver()  # psycopg is the optional `postgres` extra
        from broker.tokens.stores.postgres import PostgresGrantStore  # noqa: PLC0415

        return await PostgresGrantStore.connect(
            s.dsn,
            sealer,
            clock,
            schema=s.schema,
            identity=identity,
            record_identity=record_identity,
            due_rule=due_rule,
        )
    if s.path is None:
        raise ConfigError("[store].path is required for the sqlite store")
    return await SqliteGrantStore.connect(
        str(s.path),
        sealer,
        clock,
        identity=identity,
        record_identity=record_identity,
        due_rule=due_rule,
    )
