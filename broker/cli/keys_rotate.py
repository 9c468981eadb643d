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

Each step is one :func:`broker.cli.keys_audited.run_audited` ceremony (``keys.rotate.<step>``, hash-chained;
``prepare`` writes its intent record before the key exists, ``retire`` names the destroyed
key). Nothing here prints or logs a PIN or a token.
"""

from __future__ import annotations

import argparse
import functools

from broker.cli.keys_audited import (
    Deps,
    run_audited,
)
from broker.cli.keys_rotate_activate import cmd_activate
from broker.cli.keys_rotate_ledger import RotationDeps
from broker.cli.keys_rotate_prepare import cmd_prepare
from broker.cli.keys_rotate_retire import cmd_retire
from broker.cli.keys_rotate_status import cmd_status

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
    """Add ``keys rotate ...`` (called by :func:`broker.cli.keys.register`)."""
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
