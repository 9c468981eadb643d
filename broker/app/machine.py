"""Wiring of the machine-to-machine grants (``[[machine_grants]]``, DOME client_credentials with
the ``[credential]`` LEARCredentialMachine) for ``broker serve``: the machine token source the
token core renews them with, and their creation at start.

Creation at start is best effort: a grant that cannot be made now (Verifier down, credential
refused locally, empty 403) is logged at ERROR with its reason and the broker starts anyway
(user grants keep working); the first caller of that grant tries again through the token core
(after its back-off).
"""

from __future__ import annotations

import logging
from pathlib import Path

from broker.clock import Clock
from broker.config import Settings
from broker.credentials.lear import LearCredentialMachine
from broker.credentials.store import credential_path, load_credential
from broker.errors import BrokerError, CredentialError
from broker.keys.api import Signer
from broker.oauth.client import OAuthClient
from broker.oauth.client_credentials import MachineClient
from broker.tokens.broker import TokenBroker
from broker.tokens.machine import MachineGrantSpec

# The log lines keep the logger name they had as broker/machine_grants.py.
_log = logging.getLogger("broker.machine_grants")


def credential_loader(path: Path | None) -> LearCredentialMachine:
    """The stored credential, read anew for every acquisition (a renewed one is picked up
    without a restart)."""
    if path is None:
        raise CredentialError(
            "no machine credential: set [credential].path or [audit].path", reason="missing"
        )
    return load_credential(path)


def machine_source(
    settings: Settings, client: OAuthClient, signer: Signer, clock: Clock
) -> MachineClient | None:
    """The machine token source, or None when no machine grant is configured."""
    if not settings.machine_grants:
        return None
    path = credential_path(settings.credential.path, settings.audit.path)
    return MachineClient(client, signer, clock, lambda: credential_loader(path))


def machine_specs(settings: Settings, *, issuer: str, client_id: str) -> list[MachineGrantSpec]:
    return [
        MachineGrantSpec(label=g.label, scope=g.scope, issuer=issuer, client_id=client_id)
        for g in settings.machine_grants
    ]


async def ensure_machine_grants(
    broker: TokenBroker, specs: list[MachineGrantSpec]
) -> dict[str, str]:
    """Register and create every configured machine grant; returns label -> grant id (those
    that could not be created now too: callers reach them by id or label once created)."""
    ids: dict[str, str] = {}
    for spec in specs:
        ids[spec.label] = broker.register_machine_grant(spec)
        try:
            grant = await broker.ensure_machine_grant(spec)
        except BrokerError as exc:
            _log.error(
                "machine grant %s (%s) not created at start: %s (%s); its first caller tries again",
                spec.label,
                spec.grant_id,
                exc.reason,
                "retryable" if exc.retryable else "not retryable: an operator has to act",
            )
            continue
        _log.info("machine grant ready", extra={"grant_id": grant.grant_id, "label": spec.label})
    return ids
