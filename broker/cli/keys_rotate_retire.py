"""``broker keys rotate retire``: destroy the retiring key once no active grant needs it, or
with ``--force`` after marking those grants ``reauthorization_required`` (``key_retired``).
"""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli.keys_audited import (
    Deps,
    Facts,
    Result,
)
from broker.cli.keys_remove import confirm
from broker.cli.keys_rotate_ledger import (
    RotationDeps,
    config_target,
    identities_document,
    identities_text,
    one_in_state,
    rotation_settings,
    with_ledger,
)
from broker.cli.keys_token import (
    open_token,
)
from broker.errors import (
    ConfigError,
    InvalidArgument,
    KeyNotFound,
)
from broker.keys.uri import parse_key_uri
from broker.tokens.model import GrantStatus
from broker.tokens.stores.deployment import IdentityState, RecordedIdentity
from broker.tokens.stores.identities import LedgerStore

RETIRED_REASON = "key_retired"


def cmd_retire(rdeps: RotationDeps, deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    settings = rotation_settings(args)
    target = config_target(deps, settings)
    with open_token(deps, target, args) as (store, _):
        configured_did = store.get(target.label or "").did

        async def plan(ledger: LedgerStore) -> tuple[RecordedIdentity, list[Any]]:
            old = one_in_state(
                await ledger.identities(),
                IdentityState.RETIRING,
                "activate a prepared identity first",
            )
            if old.identity.did == configured_did:
                raise InvalidArgument(
                    f"[key] uri still names the retiring key {old.identity.did}: set it to the "
                    "active key and restart every replica before retiring the old one"
                )
            live = [
                g
                for g in await ledger.list()
                if g.status is GrantStatus.ACTIVE and old.identity.owns(g.issuer, g.client_id)
            ]
            return old, live

        old, live = with_ledger(rdeps, deps, settings, store, plan)
        facts.key_uri, facts.did = old.key_uri, old.identity.did
        if live and not args.force:
            raise InvalidArgument(
                f"{len(live)} active grant(s) still belong to {old.identity.did}: re-authorize "
                "them (a new login) or pass --force to mark them reauthorization_required"
            )
        if old.key_uri is None:
            raise ConfigError(f"the grant store records no key URI for {old.identity.did}")
        label = parse_key_uri(old.key_uri).object
        if label is None:
            raise ConfigError(f"the key URI of {old.identity.did} names no object")
        try:
            info = store.get(label)
        except KeyNotFound:
            info = None
        if info is not None and info.did != old.identity.did:
            raise ConfigError(f"the key {label!r} in the token is not {old.identity.did}")
        if info is not None and not args.yes:
            confirm(
                f"This destroys the retiring key {label!r} ({info.did}) for good.\n",
                info.did,
                "did",
                "nothing was destroyed",
            )

        async def end(ledger: LedgerStore) -> None:
            for grant in live:
                # Under the grant's refresh lock (cross-replica on PostgreSQL): a refresh in
                # flight finishes first, and the next one re-reads the status and stops.
                async with ledger.refresh_lock(grant.grant_id):
                    await ledger.set_status(
                        grant.grant_id,
                        GrantStatus.REAUTHORIZATION_REQUIRED,
                        reason=RETIRED_REASON,
                    )

        with_ledger(rdeps, deps, settings, store, end)
        if info is not None:
            store.delete(label)

        async def mark(ledger: LedgerStore) -> list[RecordedIdentity]:
            await ledger.set_identity(old.identity, state=IdentityState.RETIRED)
            return list(await ledger.identities())

        recorded = with_ledger(rdeps, deps, settings, store, mark)
    document = {
        "retired": old.identity.did,
        "key_destroyed": info is not None,
        "grants_ended": [g.grant_id for g in live],
        "identities": identities_document(recorded),
    }
    text = (
        f"retired identity {old.identity.did}"
        + (f" (key {label!r} destroyed)" if info is not None else " (key already gone)")
        + f"; {len(live)} grant(s) marked reauthorization_required\n"
        + identities_text(recorded)
    )
    return document, text
