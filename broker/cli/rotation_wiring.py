"""The serve-side parts the rotation ceremony (``broker keys rotate``) uses, wired for the
``broker`` command: the ceremonies sit below the composition root and do not import it.

The grpc-free parts of the composition root (:mod:`broker.app.stores`, :mod:`broker.app.oauth`)
are imported when a rotate step first needs them, not when the command starts: importing
:mod:`broker.cli` imports no part of :mod:`broker.app` (the stores are heavy, and ``broker serve``
must quiet gRPC C-core before anything imports grpc).
"""

from __future__ import annotations

import httpx

from broker.cli.keys_rotate_ledger import RotationDeps
from broker.clock import Clock
from broker.config import Settings
from broker.keys.api import Sealer
from broker.oauth.config import ClientConfig
from broker.tokens.stores.identities import LedgerStore


async def open_ledger(settings: Settings, sealer: Sealer, clock: Clock) -> LedgerStore:
    """The configured grant store, opened without binding or recording an identity."""
    from broker.app.stores import open_store  # noqa: PLC0415 - see the module docstring

    return await open_store(settings, sealer, clock, None, record_identity=False)


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The service's HTTP client to the authorization server."""
    from broker.app.oauth import http_client as service_http_client  # noqa: PLC0415

    return service_http_client(settings)


def client_config(settings: Settings, client_id: str) -> ClientConfig:
    """The service's OAuth client configuration for ``client_id``."""
    from broker.app.oauth import client_config as service_client_config  # noqa: PLC0415

    return service_client_config(settings, client_id)


def rotation_deps() -> RotationDeps:
    return RotationDeps(
        open_store=open_ledger, http_factory=http_client, client_config=client_config
    )
