"""``broker keys list | show | tsl-entry | selftest | audit-verify``: the commands that
change nothing in the token (``selftest`` signs a challenge; each is still audited, except
``audit-verify``, which reads the log it would append to).
"""

from __future__ import annotations

import argparse
import sys

from broker.audit import verify_chain
from broker.ceremony import output, tsl
from broker.ceremony.selftest import run_selftest
from broker.cli.errors import error_document, mark_reported
from broker.cli.keys_audited import (
    Deps,
    Facts,
    Result,
    audit_log_path,
)
from broker.cli.keys_token import (
    get_key,
    key_target,
    open_token,
)
from broker.errors import (
    AuditError,
)


def cmd_list(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = key_target(deps, args, facts, need_label=False)
    with open_token(deps, target, args, read_only=True) as (store, orphans):
        infos = store.list()
        sealing = store.list_sealing_keys()
    document = {
        "keys": [output.key_document(i) for i in infos],
        "sealing_keys": [{"label": label, "id": key_id.hex()} for label, key_id in sealing],
        "orphans": [
            {"label": o.key.label, "id": o.key.key_id.hex(), "half": o.key.half, "why": o.why}
            for o in orphans
        ],
    }
    text = output.key_list_text(infos) + "".join(
        f"{label}\tid={key_id.hex()}\tAES-256 sealing key\n" for label, key_id in sealing
    )
    return document, text


def cmd_show(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = key_target(deps, args, facts, need_label=True)
    with open_token(deps, target, args, read_only=True) as (store, _):
        info = get_key(store, target, facts)
    return output.key_document(info), output.key_text(info)


def cmd_tsl_entry(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = key_target(deps, args, facts, need_label=True)
    with open_token(deps, target, args) as (store, _):
        info = get_key(store, target, facts)
    entry = tsl.build_entry(
        did=info.did,
        issuer=args.issuer,
        url=args.url,
        redirect_uris=args.redirect_uri,
        post_logout_uris=args.post_logout_uri or [],
        jwks_uri=args.jwks_uri,
    )
    document = tsl.wrapped(entry) if args.wrap else entry
    return document, tsl.render_yaml(entry, wrap=args.wrap)


def cmd_selftest(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = key_target(deps, args, facts, need_label=True)
    with open_token(deps, target, args) as (store, _):
        info = get_key(store, target, facts)
        report = run_selftest(store.signer(info.label), info, clock=deps.clock)
    return output.selftest_document(report), output.selftest_text(report)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    result = verify_chain(args.log or audit_log_path(args))
    broken = (
        None
        if result.ok
        else AuditError(
            f"audit chain broken at record {result.first_bad_seq}: {result.reason}",
            reason="audit_chain_broken",
        )
    )
    document = output.verify_document(result)
    if broken is not None:  # one JSON document: the report carries the error member
        document.update(error_document(broken))
        mark_reported(broken)
    output.emit(sys.stdout, as_json=args.json, document=document, text=output.verify_text(result))
    if broken is not None:
        raise broken
    return 0
