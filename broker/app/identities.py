"""``broker serve`` during a key rotation: one signer and one OAuth client per identity.

The configured ``[key] uri`` is the active identity: new logins and machine grants use it.
The grant store records the other identities of a rotation (``broker keys rotate``) with their
key URI (never a PIN). At start, every recorded identity that still serves grants (prepared
or retiring; not retired) gets its signer from the same token and PIN as ``[key] uri``,
self-tested like the active key, and its own OAuth client (its did as ``client_id``), so the
token core refreshes each grant as the identity that created it. An identity that cannot be
opened is logged at ERROR and skipped: its grants then fail with ``deployment_mismatch``
while everything else is served.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from broker.ceremony.selftest import run_selftest
from broker.clock import Clock
from broker.errors import BrokerError, ConfigError
from broker.keys.api import KeyStore, Signer
from broker.keys.kid import KidFormat, with_kid_format
from broker.keys.uri import parse_key_uri
from broker.oauth.config import ClientConfig
from broker.tokens.stores.deployment import DeploymentIdentity, IdentityState, RecordedIdentity

# The log lines keep the logger name of the composition root (was broker/service.py).
log = logging.getLogger("broker.service")


@dataclass(frozen=True)
class IdentitySigner:
    """A further identity this process signs as, with the client config to talk as it."""

    recorded: RecordedIdentity
    signer: Signer
    config: ClientConfig


def other_serving(
    recorded: Sequence[RecordedIdentity], active: DeploymentIdentity
) -> list[RecordedIdentity]:
    """The recorded identities besides ``active`` whose grants are still refreshed."""
    return [r for r in recorded if r.identity != active and r.state is not IdentityState.RETIRED]


def open_identity_signers(
    keystore: KeyStore,
    token: str,
    recorded: Sequence[RecordedIdentity],
    active: DeploymentIdentity,
    config: ClientConfig,
    *,
    kid_format: KidFormat,
    clock: Clock,
) -> list[IdentitySigner]:
    """Open the signer of every other serving identity in ``keystore`` (the token ``token``
    of ``[key] uri``). Blocking (HSM calls): run it off the event loop."""
    opened = []
    for r in other_serving(recorded, active):
        try:
            opened.append(_open_one(keystore, token, r, config, kid_format=kid_format, clock=clock))
        except BrokerError as exc:
            log.error(
                "identity %s (rotation state %s) not opened: %s; its grants are not refreshed",
                r.identity.did,
                r.state.value,
                exc.message,
                extra={"did": r.identity.did, "reason": exc.reason},
            )
    return opened


def _open_one(
    keystore: KeyStore,
    token: str,
    r: RecordedIdentity,
    config: ClientConfig,
    *,
    kid_format: KidFormat,
    clock: Clock,
) -> IdentitySigner:
    if r.key_uri is None:
        raise ConfigError("the grant store records no key URI for it")
    ref = parse_key_uri(r.key_uri)
    if ref.object is None or ref.token != token:
        raise ConfigError(
            f"its key URI {ref.to_uri()} names no key in the token {token!r} of [key] uri"
        )
    info = keystore.get(ref.object)
    if info.did != r.identity.did:
        raise ConfigError(f"the key {ref.object!r} in the token is {info.did}, not this identity")
    key_signer = keystore.signer(ref.object)
    run_selftest(key_signer, info, clock=clock)
    signer = with_kid_format(key_signer, info.public_key, kid_format)
    client = dataclasses.replace(config, client_id=r.identity.client_id)
    log.info(
        "serving grants of identity %s too (rotation state %s)",
        r.identity.did,
        r.state.value,
        extra={"did": r.identity.did},
    )
    return IdentitySigner(r, signer, client)
