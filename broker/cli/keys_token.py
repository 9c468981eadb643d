"""The token a ``broker keys`` command works on: the key URI it names, and no orphan keys.

The key URI comes from ``--key`` or ``$BROKER_KEY_URI`` (the PIN only from a file). A command
that changes the token refuses to run while the token holds a key the audit log does not account
for (an *orphan*: made outside the ceremonies, a ceremony killed after its intent record, or a
half-made key: one object of the pair only); read-only commands name the orphans on stderr and
go on.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from broker.audit import verified_records
from broker.ceremony.backend import CeremonyStore, KeyTarget, refuse_inline_pin
from broker.ceremony.orphans import SEALING, SIGNING, AuditedKeys, Orphan, TokenKey
from broker.cli.keys_audited import (
    KEY_URI_ENV,
    Deps,
    Facts,
    audit_log_path,
)
from broker.errors import (
    ConfigError,
    InvalidKeyUri,
    KeyNotFound,
    OrphanKey,
)
from broker.keys.api import KeyInfo
from broker.keys.uri import KeyRef

RANDOM_ID_BYTES = 8


def key_target(
    deps: Deps, args: argparse.Namespace, facts: Facts, *, need_label: bool
) -> KeyTarget:
    text: str | None = args.key or os.environ.get(KEY_URI_ENV)
    if not text:
        raise ConfigError(f"no key URI: pass --key pkcs11:... or set {KEY_URI_ENV}")
    refuse_inline_pin(text)
    target = deps.backend.parse(text)
    facts.key_uri = target.uri
    if need_label and not target.label:
        raise InvalidKeyUri("the key URI names no object= (the key label)")
    return target


def _inventory(store: CeremonyStore) -> list[TokenKey]:
    keys = [TokenKey(SIGNING, i.label, i.key_id, i.did, i.fingerprint) for i in store.list()]
    keys += [TokenKey(SEALING, label, key_id) for label, key_id in store.list_sealing_keys()]
    keys += [TokenKey(SIGNING, h.label, h.key_id, half=h.present) for h in store.list_half_keys()]
    return keys


def _orphan_uri(target: KeyTarget, key: TokenKey) -> str:
    uri = KeyRef(token=target.token, object=key.label, id=key.key_id).to_uri()
    return uri.replace(";type=private", "") if key.kind == SEALING or key.half else uri


def find_orphans(store: CeremonyStore, target: KeyTarget, args: argparse.Namespace) -> list[Orphan]:
    """The keys of the token the audit log (chain verified first) does not account for."""
    audited = AuditedKeys.from_records(verified_records(audit_log_path(args)))
    return audited.orphans(target.token, _inventory(store))


def _orphan_message(orphans: list[Orphan], target: KeyTarget) -> str:
    first = orphans[0]
    uri = _orphan_uri(target, first.key)
    more = f" ({len(orphans) - 1} more orphan key(s) in this token)" if len(orphans) > 1 else ""
    if not first.adoptable:
        return (
            f"{first.describe()} in token {target.token!r}{more}; it cannot sign and cannot be "
            f"adopted: remove it with 'broker keys destroy --key {uri}', then run the ceremony "
            "that made it again"
        )
    return (
        f"{first.describe()} in token {target.token!r}{more}; check it and record it "
        f"with 'broker keys adopt --key {uri}', or remove it with "
        f"'broker keys destroy --key {uri}'"
    )


def _refuse_orphans(orphans: list[Orphan], target: KeyTarget) -> None:
    if orphans:
        raise OrphanKey(_orphan_message(orphans, target))


def _warn_orphans(orphans: list[Orphan], target: KeyTarget) -> None:
    """Read-only commands name the orphans on stderr and go on (an operator diagnosing an
    interrupted ceremony needs ``list`` and ``show``)."""
    if orphans:
        sys.stderr.write(f"warning: orphan key: {_orphan_message(orphans, target)} [orphan_key]\n")


@contextmanager
def open_token(
    deps: Deps,
    target: KeyTarget,
    args: argparse.Namespace,
    *,
    spare: bool = False,
    read_only: bool = False,
) -> Iterator[tuple[CeremonyStore, list[Orphan]]]:
    """Open the token and refuse to go on while it holds an orphan key.

    ``spare``: the orphan the URI names is let through (adopt and destroy act on it); the
    remaining orphans are returned. ``read_only``: nothing is refused; the orphans are named on
    stderr and returned.
    """
    store = deps.backend.open(target, pin_file=args.pin_file)
    try:
        orphans = find_orphans(store, target, args)
        if read_only:
            _warn_orphans(orphans, target)
            yield store, orphans
            return
        mine = [o for o in orphans if spare and o.key.label == target.label]
        _refuse_orphans([o for o in orphans if o not in mine], target)
        yield store, mine
    finally:
        store.close()


def label_of(target: KeyTarget) -> str:
    assert target.label is not None  # key_target(need_label=True) checked it
    return target.label


def get_key(store: CeremonyStore, target: KeyTarget, facts: Facts) -> KeyInfo:
    info = store.get(label_of(target))
    if target.key_id is not None and info.key_id != target.key_id:
        raise KeyNotFound("a key with this label exists but its id differs from the URI's id=")
    facts.learn(info)
    return info


def new_key_id(target: KeyTarget) -> bytes:
    return target.key_id if target.key_id is not None else os.urandom(RANDOM_ID_BYTES)


class RefusePinOnArgv(argparse.Action):
    """``--pin`` and friends exist only to say no, without repeating the value."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string}: a PIN never goes on the command line (it shows in ps and shell "
            "history); use pin-source=file: in the key URI or --pin-file"
        )
