"""``broker keys generate | import | generate-sealing-key``: the commands that create a key.

Each writes the ``<action>.intent`` audit record just before the key exists and defers
SIGINT/SIGTERM until the completion record is written (:meth:`Facts.intend`).
"""

from __future__ import annotations

import argparse

from broker.ceremony import output
from broker.cli.keys_audited import (
    Deps,
    Facts,
    Result,
)
from broker.cli.keys_token import (
    key_target,
    label_of,
    new_key_id,
    open_token,
)
from broker.errors import (
    InvalidArgument,
)

MAX_KEY_FILE_BYTES = 64 * 1024


def _read_key_file(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read the key file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise InvalidArgument(f"the key file {path} is too large to be a private key")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"the key file {path} is not text (expected PEM, JWK JSON or hex)"
        ) from None


def cmd_generate(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = key_target(deps, args, facts, need_label=True)
    key_id = new_key_id(target)
    with open_token(deps, target, args) as (store, _):
        facts.intend(deps.backend.key_uri(target, key_id))
        info = store.generate(label_of(target), key_id)
        facts.learn(info)
        facts.created()
    return output.key_document(info), output.key_text(info)


def cmd_import(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = key_target(deps, args, facts, need_label=True)
    private_key = deps.backend.load_private_key(_read_key_file(args.from_file))
    key_id = new_key_id(target)
    with open_token(deps, target, args) as (store, _):
        facts.intend(deps.backend.key_uri(target, key_id))
        info = store.import_key(label_of(target), key_id, private_key)
        facts.learn(info)
        facts.created()
    del private_key
    document = output.key_document(info)
    document["reminder"] = output.DESTROY_PLAINTEXT_REMINDER
    return document, output.key_text(info) + "\n" + output.DESTROY_PLAINTEXT_REMINDER + "\n"


def cmd_generate_sealing_key(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = key_target(deps, args, facts, need_label=True)
    key_id = new_key_id(target)
    uri = deps.backend.sealing_key_uri(target, key_id)
    with open_token(deps, target, args) as (store, _):
        facts.intend(uri)
        store.generate_sealing_key(label_of(target), key_id)
        facts.created()
    document = {"label": target.label, "id": key_id.hex(), "type": "AES-256", "uri": uri}
    text = f"generated AES-256 sealing key {target.label!r} (id {key_id.hex()}) in the token\n"
    return document, text
