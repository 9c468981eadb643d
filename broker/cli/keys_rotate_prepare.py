"""``broker keys rotate prepare``: generate the next key, print its TSL entry, store its
credential pending activation and record the identity as ``prepared``.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from broker.ceremony import tsl
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
    identity_of,
    path_only,
    rotation_settings,
    with_ledger,
)
from broker.cli.keys_token import (
    key_target,
    new_key_id,
    open_token,
)
from broker.config import Settings
from broker.credentials.lear import parse_credential
from broker.credentials.store import credential_path, save_credential
from broker.credentials.verify import verify_credential
from broker.errors import (
    ConfigError,
    InvalidArgument,
)
from broker.tokens.stores.deployment import IdentityState, RecordedIdentity
from broker.tokens.stores.identities import LedgerStore


def _prepare_credential(
    settings: Settings, args: argparse.Namespace, did: str, deps: Deps, facts: Facts
) -> Path | None:
    """Check the new key's credential (bound to ``did``) before anything is created."""
    if not args.credential:
        return None
    path = credential_path(settings.credential.path, settings.audit.path)
    if path is None:
        raise ConfigError("no credential location: set [credential].path or [audit].path")
    try:
        text = Path(args.credential).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read the credential file {args.credential}") from exc
    cred = parse_credential(text)
    facts.credential_id, facts.credential_sha256 = cred.credential_id, cred.sha256
    verify_credential(cred, did=did, now=datetime.fromtimestamp(deps.clock.now(), UTC))
    pending = path.with_name(path.name + NEXT_CREDENTIAL_SUFFIX)
    save_credential(pending, cred)
    return pending


def cmd_prepare(rdeps: RotationDeps, deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    settings = rotation_settings(args)
    active_target = config_target(deps, settings)
    target = key_target(deps, args, facts, need_label=True)
    if target.token != active_target.token:
        raise InvalidArgument(
            f"the new key must be in the token of [key] uri ({active_target.token!r}): serve "
            "opens both keys with the same PIN"
        )
    assert target.label is not None and active_target.label is not None
    key_id = new_key_id(target)
    with open_token(deps, target, args) as (store, _):
        active_info = store.get(active_target.label)
        active = identity_of(settings, active_info.did)

        async def check(ledger: LedgerStore) -> None:
            recorded = await ledger.identities()
            if not any(r.identity == active for r in recorded):
                raise ConfigError(
                    f"the grant store does not record the configured identity {active.did}"
                )
            busy = [r for r in recorded if r.state is IdentityState.PREPARED]
            if busy:
                raise InvalidArgument(
                    f"a rotation is already prepared (identity {busy[0].identity.did}): "
                    "activate it or retire it first"
                )

        with_ledger(rdeps, deps, settings, store, check)
        facts.intend(deps.backend.key_uri(target, key_id))
        info = store.generate(target.label, key_id)
        facts.learn(info)
        facts.created()
        pending = _prepare_credential(settings, args, info.did, deps, facts)
        new = identity_of(settings, info.did)
        new_uri = None if facts.key_uri is None else path_only(facts.key_uri)

        async def record(ledger: LedgerStore) -> list[RecordedIdentity]:
            await ledger.set_identity(active, key_uri=path_only(active_target.uri))
            await ledger.add_identity(new, state=IdentityState.PREPARED, key_uri=new_uri)
            return list(await ledger.identities())

        recorded = with_ledger(rdeps, deps, settings, store, record)
    base = settings.web.public_base_url.rstrip("/")
    entry = tsl.build_entry(
        did=info.did,
        issuer=settings.oauth.issuer,
        url=base,
        redirect_uris=[settings.oauth.redirect_uri],
        post_logout_uris=[base + "/"],
    )
    document = {
        "prepared": info.did,
        "key_uri": new_uri,
        "tsl_entry": entry,
        "credential": None if pending is None else str(pending),
        "identities": identities_document(recorded),
    }
    text = (
        f"prepared identity {info.did} (key {new_uri})\n"
        "Register this client in the Trusted Services List (the Verifier loads it at start):\n"
        f"{tsl.render_yaml(entry)}"
        + (f"credential stored pending activation: {pending}\n" if pending else "")
        + "Then check with 'broker keys rotate status' and run 'broker keys rotate activate'.\n"
    )
    return document, text
