"""``broker keys rotate prepare|status|activate|retire``: the client-key rotation ceremony.

In DOME the did:key IS the client_id: a new key is a new client, registered in the Trusted
Services List before use, and a refresh token works only for the client it was issued to.
So a rotation keeps both keys live in between (:mod:`broker.tokens.stores.identities`):

- ``prepare --key NEW_URI``: the new key is generated in the token (intent record first, like
  ``keys generate``), its TSL entry printed, its LEARCredentialMachine checked and stored next
  to the active one with ``--credential FILE`` (``<credential file>.next``), and the grant
  store records the new identity as ``prepared`` with its key URI (and the active key's URI,
  so that serve can open both). A plain restart never adds an identity.
- ``status``: the identities and their state, the grants of each (by client_id, kind and
  status), and a pre-flight of the prepared client at the AS: a refresh with a bogus token
  signed by the new key, told apart by :mod:`broker.oauth.as_errors` (401 ``invalid_client``:
  the AS does not know the client yet; ``invalid_grant``: the client is known, the grant
  refused, as it should be).
- ``activate``: the prepared identity becomes ``active``, the old one ``retiring``; the
  pending credential replaces the stored one. Then set ``[key] uri`` to the new key and
  restart each replica: new logins and machine grants use it; user grants of the old identity
  keep refreshing with the old key until re-authorized or ended.
- ``retire``: destroy the retiring key once no active grant needs it, or with ``--force``
  after marking those grants ``reauthorization_required`` (reason ``key_retired``; callers
  then get FAILED_PRECONDITION and the old refresh tokens are never sent again); the identity
  becomes ``retired``.

Each step is one :func:`commands.run_audited` ceremony (``keys.rotate.<step>``, hash-chained;
``prepare`` writes its intent record before the key exists, ``retire`` names the destroyed
key). Nothing here prints or logs a PIN or a token.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import functools
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from broker.ceremony import tsl
from broker.ceremony.backend import CeremonyStore, KeyTarget
from broker.ceremony.commands import (
    Deps,
    Facts,
    Result,
    _confirm,
    _new_id,
    _store,
    _target,
    run_audited,
)
from broker.clock import Clock
from broker.config import Settings, load_settings
from broker.credentials.lear import parse_credential, verify_credential
from broker.credentials.store import credential_path, save_credential
from broker.errors import (
    BrokerError,
    ClientAuthenticationFailed,
    ConfigError,
    InvalidArgument,
    InvalidGrant,
    KeyNotFound,
)
from broker.keys.api import Sealer, Signer
from broker.keys.uri import parse_key_uri
from broker.oauth.client import OAuthClient
from broker.oauth.config import ClientConfig
from broker.tokens.model import GrantStatus
from broker.tokens.stores.deployment import DeploymentIdentity, IdentityState, RecordedIdentity
from broker.tokens.stores.identities import LedgerStore

T = TypeVar("T")

NEXT_CREDENTIAL_SUFFIX = ".next"
RETIRED_REASON = "key_retired"


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
    The serve wiring provides them (:mod:`broker.rotation_wiring`): the ceremonies do not
    import it."""

    open_store: StoreOpener
    http_factory: HttpFactory
    client_config: ConfigFactory


# --- helpers ------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _config_target(deps: Deps, settings: Settings) -> KeyTarget:
    target = deps.backend.parse(settings.key.uri)
    if target.label is None:
        raise ConfigError("[key].uri must name the key with object=<label>")
    return target


def _sealing(store: CeremonyStore, settings: Settings) -> Sealer:
    label = settings.key.sealing_key_label
    if label is None:
        raise ConfigError("[key].sealing_key_label is required (the grant store is sealed)")
    sealer_of = getattr(store, "sealer", None)
    if sealer_of is None:
        raise ConfigError("this key backend cannot open the grant store's sealing key")
    sealer: Sealer = sealer_of(label)
    return sealer


def _path_only(uri: str) -> str:
    """The key's URI as the store records it: token, object, id (serve opens it with the PIN
    source and module of ``[key] uri``)."""
    return uri.split("?", 1)[0]


def _identity(settings: Settings, did: str) -> DeploymentIdentity:
    return DeploymentIdentity(issuer=settings.oauth.issuer, client_id=did, did=did)


def _with_ledger(
    rdeps: RotationDeps,
    deps: Deps,
    settings: Settings,
    store: CeremonyStore,
    work: Callable[[LedgerStore], Awaitable[T]],
) -> T:
    async def run() -> T:
        ledger = await rdeps.open_store(settings, _sealing(store, settings), deps.clock)
        try:
            return await work(ledger)
        finally:
            await ledger.close()

    return asyncio.run(run())


def _in_state(recorded: Sequence[RecordedIdentity], state: IdentityState) -> list[RecordedIdentity]:
    return [r for r in recorded if r.state is state]


def _one(recorded: Sequence[RecordedIdentity], state: IdentityState, hint: str) -> RecordedIdentity:
    found = _in_state(recorded, state)
    if not found:
        raise InvalidArgument(f"no {state.value} identity in the grant store: {hint}")
    return found[0]


def _identities_document(recorded: Sequence[RecordedIdentity]) -> list[dict[str, Any]]:
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


def _identities_text(recorded: Sequence[RecordedIdentity]) -> str:
    return "".join(
        f"  {r.state.value:<9} {r.identity.did}  ({r.role.value}; key {r.key_uri or 'unknown'})\n"
        for r in recorded
    )


# --- prepare ------------------------------------------------------------------------------------


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
    settings = _settings(args)
    active_target = _config_target(deps, settings)
    target = _target(deps, args, facts, need_label=True)
    if target.token != active_target.token:
        raise InvalidArgument(
            f"the new key must be in the token of [key] uri ({active_target.token!r}): serve "
            "opens both keys with the same PIN"
        )
    assert target.label is not None and active_target.label is not None
    key_id = _new_id(target)
    with _store(deps, target, args) as (store, _):
        active_info = store.get(active_target.label)
        active = _identity(settings, active_info.did)

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

        _with_ledger(rdeps, deps, settings, store, check)
        facts.intend(deps.backend.key_uri(target, key_id))
        info = store.generate(target.label, key_id)
        facts.learn(info)
        facts.created()
        pending = _prepare_credential(settings, args, info.did, deps, facts)
        new = _identity(settings, info.did)
        new_uri = None if facts.key_uri is None else _path_only(facts.key_uri)

        async def record(ledger: LedgerStore) -> list[RecordedIdentity]:
            await ledger.set_identity(active, key_uri=_path_only(active_target.uri))
            await ledger.add_identity(new, state=IdentityState.PREPARED, key_uri=new_uri)
            return list(await ledger.identities())

        recorded = _with_ledger(rdeps, deps, settings, store, record)
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
        "identities": _identities_document(recorded),
    }
    text = (
        f"prepared identity {info.did} (key {new_uri})\n"
        "Register this client in the Trusted Services List (the Verifier loads it at start):\n"
        f"{tsl.render_yaml(entry)}"
        + (f"credential stored pending activation: {pending}\n" if pending else "")
        + "Then check with 'broker keys rotate status' and run 'broker keys rotate activate'.\n"
    )
    return document, text


# --- status -------------------------------------------------------------------------------------


async def _preflight(
    rdeps: RotationDeps, settings: Settings, signer: Signer, did: str, clock: Clock
) -> dict[str, str]:
    """A refresh with a bogus token as ``did``: does the AS know the client?"""
    unpinned = dataclasses.replace(
        settings, oauth=dataclasses.replace(settings.oauth, client_id=None)
    )
    config = rdeps.client_config(unpinned, did)  # [oauth].client_id names the active key
    http = rdeps.http_factory(settings)
    try:
        client = OAuthClient(config, http, signer, clock)
        try:
            await client.refresh("preflight-" + secrets.token_urlsafe(16), subject=did)
        except ClientAuthenticationFailed as exc:
            return {
                "result": "unknown_client",
                "detail": f"the AS refused the client (HTTP {exc.status_code} invalid_client): "
                "not registered yet, or registered with another jwkSetUrl",
            }
        except InvalidGrant as exc:
            return {
                "result": "client_known",
                "detail": f"the AS authenticated the client and refused the bogus grant "
                f"(HTTP {exc.status_code} {exc.error})",
            }
        except BrokerError as exc:
            return {"result": "inconclusive", "detail": f"{exc.reason}: {exc.message}"}
        return {"result": "inconclusive", "detail": "the AS accepted a bogus refresh token"}
    finally:
        await http.aclose()


def cmd_status(rdeps: RotationDeps, deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    settings = _settings(args)
    target = _config_target(deps, settings)
    facts.key_uri = target.uri
    with _store(deps, target, args, read_only=True) as (store, _):

        async def read(ledger: LedgerStore) -> tuple[list[RecordedIdentity], list[Any]]:
            return list(await ledger.identities()), await ledger.list()

        recorded, grants = _with_ledger(rdeps, deps, settings, store, read)
        preflight: dict[str, str] | None = None
        prepared = _in_state(recorded, IdentityState.PREPARED)
        if prepared and not args.no_preflight and prepared[0].key_uri is not None:
            label = parse_key_uri(prepared[0].key_uri).object
            if label is None:
                raise ConfigError("the prepared identity's key URI names no object")
            signer = store.signer(label)
            preflight = asyncio.run(
                _preflight(rdeps, settings, signer, prepared[0].identity.did, deps.clock)
            )
    counts = collections.Counter((g.client_id, g.kind.value, g.status.value) for g in grants)
    rows = [
        {"client_id": c, "kind": k, "status": s, "grants": n}
        for (c, k, s), n in sorted(counts.items())
    ]
    document: dict[str, Any] = {"identities": _identities_document(recorded), "grants": rows}
    text = "identities:\n" + _identities_text(recorded) + "grants:\n"
    text += "".join(
        f"  {r['grants']:>5} {r['kind']:<8} {r['status']:<24} {r['client_id']}\n" for r in rows
    )
    if preflight is not None:
        document["preflight"] = preflight
        text += f"pre-flight of {prepared[0].identity.did}: {preflight['result']}: "
        text += preflight["detail"] + "\n"
    return document, text


# --- activate -----------------------------------------------------------------------------------


def cmd_activate(rdeps: RotationDeps, deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    settings = _settings(args)
    target = _config_target(deps, settings)
    with _store(deps, target, args) as (store, _):

        async def flip(ledger: LedgerStore) -> tuple[RecordedIdentity, list[RecordedIdentity]]:
            recorded = await ledger.identities()
            new = _one(recorded, IdentityState.PREPARED, "run 'broker keys rotate prepare'")
            for old in _in_state(recorded, IdentityState.ACTIVE):
                await ledger.set_identity(old.identity, state=IdentityState.RETIRING)
            await ledger.set_identity(new.identity, state=IdentityState.ACTIVE)
            return new, list(await ledger.identities())

        new, recorded = _with_ledger(rdeps, deps, settings, store, flip)
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
        "identities": _identities_document(recorded),
    }
    text = (
        f"activated identity {new.identity.did}\n"
        f'Now set [key] uri = "{new.key_uri}" (with its pin-source) in the configuration and '
        "restart each replica: new logins and machine grants then use the new key; grants of "
        "the old key keep refreshing with it until re-authorized or ended.\n"
        + (f"the pending credential is now the stored one: {moved}\n" if moved else "")
        + _identities_text(recorded)
    )
    return document, text


# --- retire -------------------------------------------------------------------------------------


def cmd_retire(rdeps: RotationDeps, deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    settings = _settings(args)
    target = _config_target(deps, settings)
    with _store(deps, target, args) as (store, _):
        configured_did = store.get(target.label or "").did

        async def plan(ledger: LedgerStore) -> tuple[RecordedIdentity, list[Any]]:
            old = _one(
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

        old, live = _with_ledger(rdeps, deps, settings, store, plan)
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
            _confirm(
                f"This destroys the retiring key {label!r} ({info.did}) for good.\n",
                info.did,
                "did",
                "nothing was destroyed",
            )

        async def end(ledger: LedgerStore) -> None:
            for grant in live:
                await ledger.set_status(
                    grant.grant_id, GrantStatus.REAUTHORIZATION_REQUIRED, reason=RETIRED_REASON
                )

        _with_ledger(rdeps, deps, settings, store, end)
        if info is not None:
            store.delete(label)

        async def mark(ledger: LedgerStore) -> list[RecordedIdentity]:
            await ledger.set_identity(old.identity, state=IdentityState.RETIRED)
            return list(await ledger.identities())

        recorded = _with_ledger(rdeps, deps, settings, store, mark)
    document = {
        "retired": old.identity.did,
        "key_destroyed": info is not None,
        "grants_ended": [g.grant_id for g in live],
        "identities": _identities_document(recorded),
    }
    text = (
        f"retired identity {old.identity.did}"
        + (f" (key {label!r} destroyed)" if info is not None else " (key already gone)")
        + f"; {len(live)} grant(s) marked reauthorization_required\n"
        + _identities_text(recorded)
    )
    return document, text


# --- registration -------------------------------------------------------------------------------

_STEPS = (
    ("prepare", "generate the next key, print its TSL entry, record it as prepared", cmd_prepare),
    ("status", "identities, grants per identity, pre-flight of the prepared client", cmd_status),
    ("activate", "new logins and machine grants use the prepared identity", cmd_activate),
    ("retire", "destroy the retiring key (--force: end the grants that still need it)", cmd_retire),
)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    deps: Deps,
    common: argparse.ArgumentParser,
    rdeps: RotationDeps | None = None,
) -> None:
    """Add ``keys rotate ...`` (called by :func:`commands.register`)."""
    if rdeps is None:
        return  # not wired (tests of the other commands): no rotate commands
    rotate = sub.add_parser(
        "rotate", help="rotate the client key: prepare, status, activate, retire"
    )
    steps = rotate.add_subparsers(dest="rotate_command", metavar="STEP", required=True)
    for name, help_text, body in _STEPS:
        p = steps.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.add_argument("--config", required=True, metavar="FILE", help="broker.toml")
        p.set_defaults(
            handler=functools.partial(
                run_audited, deps, f"keys.rotate.{name}", functools.partial(body, rdeps)
            ),
            command=f"keys rotate {name}",
        )
        if name == "prepare":
            p.add_argument(
                "--credential", metavar="FILE", help="the new key's LEARCredentialMachine (JWT)"
            )
        elif name == "status":
            p.add_argument(
                "--no-preflight", action="store_true", help="do not ask the AS about the client"
            )
        elif name == "retire":
            p.add_argument("--force", action="store_true", help="end the grants that need it")
            p.add_argument("--yes", action="store_true", help="do not ask to type the did")
