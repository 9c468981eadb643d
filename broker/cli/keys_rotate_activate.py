"""``broker keys rotate activate``: the prepared identity becomes ``active``, the old one
``retiring``; the pending credential replaces the stored one.
"""

from __future__ import annotations

import argparse
import os

from broker.cli.keys_audited import (
    Deps,
    Facts,
    Result,
)
from broker.cli.keys_rotate_ledger import (
    NEXT_CREDENTIAL_SUFFIX,
    RotationDeps,
    config_target,
    identities_document,
    identities_text,
    in_state,
    one_in_state,
    rotation_settings,
    with_ledger,
)
from broker.cli.keys_token import (
    open_token,
)
from broker.credentials.store import credential_path
from broker.tokens.stores.deployment import IdentityState, RecordedIdentity
from broker.tokens.stores.identities import LedgerStore


def cmd_activate(rdeps: RotationDeps, deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    settings = rotation_settings(args)
    target = config_target(deps, settings)
    with open_token(deps, target, args) as (store, _):

        async def flip(ledger: LedgerStore) -> tuple[RecordedIdentity, list[RecordedIdentity]]:
            recorded = await ledger.identities()
            new = one_in_state(recorded, IdentityState.PREPARED, "run 'broker keys rotate prepare'")
            for old in in_state(recorded, IdentityState.ACTIVE):
                await ledger.set_identity(old.identity, state=IdentityState.RETIRING)
            await ledger.set_identity(new.identity, state=IdentityState.ACTIVE)
            return new, list(await ledger.identities())

        new, recorded = with_ledger(rdeps, deps, settings, store, flip)
    facts.key_uri, facts.did = new.key_uri, new.identity.did
    moved = None
    path = credential_path(settings.credential.path, settings.audit.path)
    if path is not None:
        pending = path.with_name(path.name + NEXT_CREDENTIAL_SUFFIX)
        if pending.exists():
            os.replace(pending, path)
            moved = str(path)
    document = {
        "activated": new.identity.did,
        "key_uri": new.key_uri,
        "credential": moved,
        "identities": identities_document(recorded),
    }
    text = (
        f"activated identity {new.identity.did}\n"
        f'Now set [key] uri = "{new.key_uri}" (with its pin-source) in the configuration and '
        "restart each replica: new logins and machine grants then use the new key; grants of "
        "the old key keep refreshing with it until re-authorized or ended.\n"
        + (f"the pending credential is now the stored one: {moved}\n" if moved else "")
        + identities_text(recorded)
    )
    return document, text
