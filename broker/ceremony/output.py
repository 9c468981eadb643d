"""Human and ``--json`` rendering of ceremony results. Nothing here ever sees a secret.

``--json`` prints exactly one JSON document on stdout; human output is aligned ``name: value``
lines. A failure is not rendered here: :mod:`broker.cli.errors` prints it (one stderr line and,
with ``--json``, the error document).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TextIO

from broker.audit import VerifyResult
from broker.ceremony.selftest import SelfTestReport
from broker.keys.api import KeyInfo

CUSTODY_ATTRIBUTES = (
    "sensitive",
    "extractable",
    "never_extractable",
    "always_sensitive",
    "local",
)
_USAGE_OTHER_THAN_SIGN = ("decrypt", "derive", "unwrap")

DESTROY_PLAINTEXT_REMINDER = (
    "The key is now in the token. Destroy the plaintext key file securely "
    "(e.g. 'shred -u FILE' on a non-journaled disk, or destroy the medium), "
    "and any copy or backup of it."
)


def custody(info: KeyInfo) -> dict[str, bool | None]:
    """The custody attributes the token reports; ``None`` when the token did not say.

    ``sign_only``: CKA_SIGN true and none of CKA_DECRYPT / CKA_DERIVE / CKA_UNWRAP.
    """
    attrs = info.attributes
    out: dict[str, bool | None] = {name: attrs.get(name) for name in CUSTODY_ATTRIBUTES}
    if "sign" in attrs:
        out["sign_only"] = bool(attrs["sign"]) and not any(
            attrs.get(name, False) for name in _USAGE_OTHER_THAN_SIGN
        )
    else:
        out["sign_only"] = None
    return out


def key_document(info: KeyInfo) -> dict[str, Any]:
    return {
        "label": info.label,
        "id": info.key_id.hex(),
        "did": info.did,
        "kid": info.kid,
        "fingerprint": info.fingerprint,
        "uri": info.uri,
        "public_jwk": info.public_jwk(),
        "custody": custody(info),
    }


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _lines(pairs: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in pairs) + 2
    return "".join(f"{name + ':':<{width}}{value}\n" for name, value in pairs)


def key_text(info: KeyInfo) -> str:
    attrs = custody(info)
    return _lines(
        [
            ("label", info.label),
            ("id", info.key_id.hex()),
            ("did", info.did),
            ("kid", info.kid),
            ("fingerprint", f"SHA256:{info.fingerprint}"),
            ("key URI", info.uri),
            ("public JWK", json.dumps(info.public_jwk(), separators=(",", ":"))),
            ("custody", " ".join(f"{name}={_yes_no(v)}" for name, v in attrs.items())),
        ]
    )


def key_list_text(infos: list[KeyInfo]) -> str:
    if not infos:
        return "no keys in this token\n"
    return "".join(
        f"{i.label}\tid={i.key_id.hex()}\t{i.did}\tSHA256:{i.fingerprint}\n" for i in infos
    )


def selftest_document(report: SelfTestReport) -> dict[str, Any]:
    return {
        "ok": True,
        "did": report.did,
        "kid": report.kid,
        "mechanism": report.mechanism,
        "challenge": report.challenge,
        "jws": report.jws,
    }


def selftest_text(report: SelfTestReport) -> str:
    return _lines(
        [
            ("selftest", "ok: signed in the token, verified with the did:key public key"),
            ("did", report.did),
            ("mechanism", report.mechanism),
            ("challenge", report.challenge),
        ]
    )


def verify_document(result: VerifyResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "records": result.records,
        "first_bad_seq": result.first_bad_seq,
        "reason": result.reason,
        "last_hash": result.last_hash,
    }


def verify_text(result: VerifyResult) -> str:
    if result.ok:
        return _lines(
            [
                ("audit chain", "ok"),
                ("records", str(result.records)),
                ("last hash", result.last_hash or "-"),
            ]
        )
    return _lines(
        [
            ("audit chain", "BROKEN"),
            ("records ok", str(result.records)),
            ("first bad record", f"seq {result.first_bad_seq}"),
            ("reason", result.reason or "-"),
        ]
    )


def emit(out: TextIO, *, as_json: bool, document: Mapping[str, Any], text: str) -> None:
    """Write the JSON document or the human text."""
    if as_json:
        out.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    else:
        out.write(text)
