"""The serve-side parts the rotation ceremony (``broker keys rotate``) uses, wired for the
``broker`` command: the ceremonies sit below the composition root and do not import it."""

from __future__ import annotations

from broker.ceremony.rotate_commands import RotationDeps
from broker.clock import Clock
from broker.config import Settings
from broker.keys.api import Sealer
from broker.service import client_config, http_client, open_store
from broker.tokens.stores.identities import LedgerStore


async def open_ledger(settings: Settings, sealer: Sealer, clock: Clock) -> LedgerStore:
    """The configured grant store, opened without binding or recording an identity."""
    return await open_store(settings, sealer, clock, None, record_identity=False)


def rotation_deps() -> RotationDeps:
    return RotationDeps(
        open_store=open_ledger, http_factory=http_client, client_config=client_config
    )
