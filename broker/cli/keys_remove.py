"""``broker keys destroy | adopt``: remove a key for good, or record an orphan key.

Both act on a signing key or, failing that, on the sealing key of that label, and both ask the
operator to type the key's did (a sealing key's id in hex) unless ``--yes``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from broker.ceremony.backend import CeremonyStore, KeyTarget
from broker.ceremony.orphans import SEALING, SIGNING, TokenKey
from broker.cli.keys_audited import (
    Deps,
    Facts,
    Result,
)
from broker.cli.keys_token import (
    get_key,
    key_target,
    label_of,
    open_token,
)
from broker.errors import (
    ConfirmationMismatch,
    InvalidArgument,
    KeyNotFound,
)


def confirm(prompt: str, expected: str, what: str, nothing: str) -> None:
    """Ask the operator to type ``expected`` (the did, or a sealing key's id in hex)."""
    if sys.stdin.isatty():
        sys.stderr.write(prompt + f"Type its {what} to confirm: ")
        sys.stderr.flush()
    typed = sys.stdin.readline().strip()
    if typed != expected:
        raise ConfirmationMismatch(f"the {what} typed does not match the key's {what}; {nothing}")


def _confirm_destroy(key: TokenKey) -> None:
    if key.half is not None:
        prompt = f"This destroys the lone {key.half} key object of {_key_name(key)}.\n"
        confirm(prompt, key.key_id.hex(), "id", "nothing was destroyed")
    elif key.did is not None:
        prompt = f"This destroys key {key.label!r} ({key.did}) in the token for good.\n"
        confirm(prompt, key.did, "did", "nothing was destroyed")
    else:
        prompt = (
            f"This destroys sealing key {key.label!r} (id {key.key_id.hex()}) in the token for "
            "good: every grant sealed under it becomes unreadable.\n"
        )
        confirm(prompt, key.key_id.hex(), "id", "nothing was destroyed")


def _find_key(deps: Deps, store: CeremonyStore, target: KeyTarget, facts: Facts) -> TokenKey:
    """The signing key the URI names (whole or half-made), or else the sealing key of that
    label."""
    label = label_of(target)
    for half in store.list_half_keys():
        if half.label == label and target.key_id in (None, half.key_id):
            facts.key_uri = deps.backend.key_uri(target, half.key_id)
            return TokenKey(SIGNING, label, half.key_id, half=half.present)
    try:
        info = get_key(store, target, facts)
    except KeyNotFound:
        for sealing_label, key_id in store.list_sealing_keys():
            if sealing_label == label and target.key_id in (None, key_id):
                facts.key_uri = deps.backend.sealing_key_uri(target, key_id)
                return TokenKey(SEALING, label, key_id)
        raise
    return TokenKey(SIGNING, info.label, info.key_id, info.did, info.fingerprint)


def _key_document(key: TokenKey, uri: str | None) -> dict[str, Any]:
    document = {
        "label": key.label,
        "kind": key.kind,
        "id": key.key_id.hex(),
        "did": key.did,
        "fingerprint": key.fingerprint,
        "uri": uri,
    }
    if key.half is not None:
        document["half"] = key.half  # the one object that was in the token
    return document


def _key_name(key: TokenKey) -> str:
    if key.half is not None:
        return f"half-made key {key.label!r} (id {key.key_id.hex()}, only its {key.half} object)"
    if key.did is not None:
        return f"key {key.label!r} ({key.did})"
    return f"sealing key {key.label!r} (id {key.key_id.hex()})"


def cmd_destroy(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = key_target(deps, args, facts, need_label=True)
    with open_token(deps, target, args, spare=True) as (store, _):
        key = _find_key(deps, store, target, facts)
        if not args.yes:
            _confirm_destroy(key)
        store.delete(key.label)
    document = {"destroyed": True, **_key_document(key, facts.key_uri)}
    return document, f"destroyed {_key_name(key)}\n"


def _confirm_adopt(key: TokenKey) -> None:
    if key.did is not None:
        prompt = (
            f"Key {key.label!r} is in the token without a completed audit record.\n"
            f"  did:         {key.did}\n  fingerprint: SHA256:{key.fingerprint}\n"
            "Adopt it only if it is the key your ceremony made. "
        )
        confirm(prompt, key.did, "did", "nothing was recorded")
    else:
        prompt = (
            f"Sealing key {key.label!r} (id {key.key_id.hex()}) is in the token without a "
            "completed audit record.\nAdopt it only if it is the key your ceremony made. "
        )
        confirm(prompt, key.key_id.hex(), "id", "nothing was recorded")


def cmd_adopt(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    """Record an orphan key (one the audit log does not account for) after confirmation."""
    target = key_target(deps, args, facts, need_label=True)
    with open_token(deps, target, args, spare=True) as (store, mine):
        key = _find_key(deps, store, target, facts)
        if key.half is not None:
            raise InvalidArgument(
                f"{_key_name(key)} cannot be adopted: it cannot sign; remove it with "
                "'broker keys destroy' and run the ceremony that made it again"
            )
        if not any(o.key == key for o in mine):
            raise InvalidArgument(
                f"{_key_name(key)} is not an orphan: the audit log already records it"
            )
        if not args.yes:
            _confirm_adopt(key)
    document = {"adopted": True, **_key_document(key, facts.key_uri)}
    return document, f"adopted {_key_name(key)}: the audit log now records it\n"
