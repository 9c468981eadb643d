"""What every ``broker keys rotate`` step shares: the grant store's identity ledger, opened
through :class:`RotationDeps` with the token's sealing key, and how identities are shown.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx

from broker.ceremony.backend import CeremonyStore, KeyTarget
from broker.cli.keys_audited import Deps
from broker.clock import Clock
from broker.config import Settings
from broker.errors import (
    ConfigError,
    InvalidArgument,
)
from broker.keys.api import Sealer
from broker.oauth.config import ClientConfig
from broker.tokens.stores.deployment import DeploymentIdentity, IdentityState, RecordedIdentity
from broker.tokens.stores.identities import LedgerStore

T = TypeVar("T")

NEXT_CREDENTIAL_SUFFIX = ".next"


class SealingStore(CeremonyStore, Protocol):
    """The token opened for a rotation: it also holds the key that seals the grant store."""

    def sealer(self, label: str) -> Sealer: ...


StoreOpener = Callable[[Settings, Sealer, Clock], Awaitable[LedgerStore]]


HttpFactory = Callable[[Settings], httpx.AsyncClient]


ConfigFactory = Callable[[Settings, str], ClientConfig]


@dataclass(frozen=True)
class RotationDeps:
    """What the rotation needs besides the ceremony's: the grant store (opened without
    binding an identity), the HTTP client to the AS and the OAuth client config for a did.
    :mod:`broker.cli.rotation_wiring` provides them from the composition root, imported
    only when a step runs."""

    open_store: StoreOpener
    http_factory: HttpFactory
    client_config: ConfigFactory


def rotation_settings(args: argparse.Namespace) -> Settings:
    # The composition root is imported when a step runs, not with the command tree.
    from broker.app.settings import load_settings  # noqa: PLC0415

    return load_settings(args.config)


def config_target(deps: Deps, settings: Settings) -> KeyTarget:
    target = deps.backend.parse(settings.key.uri)
    if target.label is None:
        raise ConfigError("[key].uri must name the key with object=<label>")
    return target


def grant_store_sealer(store: CeremonyStore, settings: Settings) -> Sealer:
    label = settings.key.sealing_key_label
    if label is None:
        raise ConfigError("[key].sealing_key_label is required (the grant store is sealed)")
    sealer_of = getattr(store, "sealer", None)
    if sealer_of is None:
        raise ConfigError("this key backend cannot open the grant store's sealing key")
    sealer: Sealer = sealer_of(label)
    return sealer


def path_only(uri: str) -> str:
    """The key's URI as the store records it: token, object, id (serve opens it with the PIN
    source and module of ``[key] uri``)."""
    return uri.split("?", 1)[0]


def identity_of(settings: Settings, did: str) -> DeploymentIdentity:
    return DeploymentIdentity(issuer=settings.oauth.issuer, client_id=did, did=did)


def with_ledger(
    rdeps: RotationDeps,
    deps: Deps,
    settings: Settings,
    store: CeremonyStore,
    work: Callable[[LedgerStore], Awaitable[T]],
) -> T:
    async def run() -> T:
        ledger = await rdeps.open_store(settings, grant_store_sealer(store, settings), deps.clock)
        try:
            return await work(ledger)
        finally:
            await ledger.close()

    return asyncio.run(run())


def in_state(recorded: Sequence[RecordedIdentity], state: IdentityState) -> list[RecordedIdentity]:
    return [r for r in recorded if r.state is state]


def one_in_state(
    recorded: Sequence[RecordedIdentity], state: IdentityState, hint: str
) -> RecordedIdentity:
    found = in_state(recorded, state)
    if not found:
        raise InvalidArgument(f"no {state.value} identity in the grant store: {hint}")
    return found[0]


def identities_document(recorded: Sequence[RecordedIdentity]) -> list[dict[str, Any]]:
    return [
        {
            "did": r.identity.did,
            "client_id": r.identity.client_id,
            "issuer": r.identity.issuer,
            "role": r.role.value,
            "state": r.state.value,
            "key_uri": r.key_uri,
        }
        for r in recorded
    ]


def identities_text(recorded: Sequence[RecordedIdentity]) -> str:
    return "".join(
        f"  {r.state.value:<9} {r.identity.did}  ({r.role.value}; key {r.key_uri or 'unknown'})\n"
        for r in recorded
    )
