"""``broker keys rotate status``: the identities, the grants of each, and a pre-flight of
the prepared client at the AS (a refresh with a bogus token signed by the new key).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import secrets
from typing import Any

from broker.cli.keys_audited import (
    Deps,
    Facts,
    Result,
)
from broker.cli.keys_rotate_ledger import (
    RotationDeps,
    config_target,
    identities_document,
    identities_text,
    in_state,
    rotation_settings,
    with_ledger,
)
from broker.cli.keys_token import (
    open_token,
)
from broker.clock import Clock
from broker.config import Settings
from broker.errors import (
    BrokerError,
    ClientAuthenticationFailed,
    ConfigError,
    InvalidGrant,
)
from broker.keys.api import Signer
from broker.keys.uri import parse_key_uri
from broker.oauth.client import OAuthClient
from broker.tokens.stores.deployment import IdentityState, RecordedIdentity
from broker.tokens.stores.identities import LedgerStore


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
    settings = rotation_settings(args)
    target = config_target(deps, settings)
    facts.key_uri = target.uri
    with open_token(deps, target, args, read_only=True) as (store, _):

        async def read(ledger: LedgerStore) -> tuple[list[RecordedIdentity], list[Any]]:
            return list(await ledger.identities()), await ledger.list()

        recorded, grants = with_ledger(rdeps, deps, settings, store, read)
        preflight: dict[str, str] | None = None
        prepared = in_state(recorded, IdentityState.PREPARED)
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
    document: dict[str, Any] = {"identities": identities_document(recorded), "grants": rows}
    text = "identities:\n" + identities_text(recorded) + "grants:\n"
    text += "".join(
        f"  {r['grants']:>5} {r['kind']:<8} {r['status']:<24} {r['client_id']}\n" for r in rows
    )
    if preflight is not None:
        document["preflight"] = preflight
        text += f"pre-flight of {prepared[0].identity.did}: {preflight['result']}: "
        text += preflight["detail"] + "\n"
    return document, text
