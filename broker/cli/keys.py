"""``broker keys ...``: the key ceremony group (arguments and dispatch).

Each command is one audited ceremony (:mod:`broker.cli.keys_audited`) whose body lives with the
commands of its concern: creating a key (:mod:`~broker.cli.keys_create`), reading the token
(:mod:`~broker.cli.keys_inspect`), destroying or adopting a key (:mod:`~broker.cli.keys_remove`),
the machine credential (:mod:`~broker.cli.keys_credential`), the token itself
(:mod:`~broker.cli.keys_init_token`) and the client-key rotation (:mod:`~broker.cli.keys_rotate`).
The reusable ceremony parts (key backends, orphan accounting, TSL entry, self-test, output)
are :mod:`broker.ceremony`.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

from opentelemetry import trace

from broker.ceremony.backend import KeyBackend
from broker.cli import keys_credential, keys_init_token, keys_rotate
from broker.cli.keys_audited import (
    AUDIT_LOG_ENV,
    DEFAULT_AUDIT_LOG,
    KEY_URI_ENV,
    Body,
    Deps,
    run_audited,
)
from broker.cli.keys_create import cmd_generate, cmd_generate_sealing_key, cmd_import
from broker.cli.keys_inspect import (
    cmd_audit_verify,
    cmd_list,
    cmd_selftest,
    cmd_show,
    cmd_tsl_entry,
)
from broker.cli.keys_remove import cmd_adopt, cmd_destroy
from broker.cli.keys_rotate_ledger import RotationDeps
from broker.cli.keys_token import RefusePinOnArgv
from broker.clock import Clock, SystemClock


def _pkcs11_backend() -> KeyBackend:
    # Imported when a keys command first needs the token, not when the CLI starts.
    from broker.ceremony.pkcs11_backend import Pkcs11Backend  # noqa: PLC0415

    return Pkcs11Backend()


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument(
        "--pin",
        "--pin-value",
        "--so-pin",
        nargs="?",
        action=RefusePinOnArgv,
        help=argparse.SUPPRESS,
    )
    common.add_argument(
        "--key",
        metavar="URI",
        help=f"RFC 7512 key URI, e.g. pkcs11:token=broker;object=client-2026;id=%%01"
        f"?module-path=...&pin-source=file:/run/secrets/pin (default: ${KEY_URI_ENV})",
    )
    common.add_argument(
        "--pin-file", metavar="FILE", help="file holding the user PIN (overrides pin-source)"
    )
    common.add_argument(
        "--audit-log",
        metavar="FILE",
        help=f"audit log (default: ${AUDIT_LOG_ENV} or ./{DEFAULT_AUDIT_LOG})",
    )
    common.add_argument("--operator", help="who runs the ceremony (default: $SUDO_USER or $USER)")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    return common


_COMMANDS: tuple[tuple[str, str, str, Body], ...] = (
    ("generate", "keys.generate", "generate a P-256 key in the token", cmd_generate),
    ("import", "keys.import", "import a P-256 private key into the token", cmd_import),
    ("list", "keys.list", "list the keys in the token", cmd_list),
    ("show", "keys.show", "show a key: did, kid, JWK, fingerprint, custody", cmd_show),
    ("tsl-entry", "keys.tsl_entry", "print the DOME Trusted Services List entry", cmd_tsl_entry),
    ("selftest", "keys.selftest", "sign a challenge in the token and verify it", cmd_selftest),
    ("destroy", "keys.destroy", "destroy a key (asks to type its did)", cmd_destroy),
    (
        "adopt",
        "keys.adopt",
        "record a key found in the token without a completed audit record (asks to type its did)",
        cmd_adopt,
    ),
    (
        "generate-sealing-key",
        "keys.generate_sealing_key",
        "generate the AES-256 key that seals tokens at rest",
        cmd_generate_sealing_key,
    ),
)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    backend_factory: Callable[[], KeyBackend] | None = None,
    clock: Clock | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    rotation: RotationDeps | None = None,
) -> None:
    """Add the ``keys`` group to the ``broker`` command. The keyword arguments are for tests."""
    deps = Deps(
        backend_factory=backend_factory or _pkcs11_backend,
        clock=clock or SystemClock(),
        tracer_provider=tracer_provider,
    )
    keys = subparsers.add_parser(
        "keys", help="key ceremonies: generate, import, show, destroy, ..."
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    common = _common_parser()
    parsers: dict[str, argparse.ArgumentParser] = {}
    for name, action, help_text, body in _COMMANDS:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(
            handler=functools.partial(run_audited, deps, action, body), command=f"keys {name}"
        )
        parsers[name] = p
    parsers["import"].add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        required=True,
        help="private key file: PEM, JWK JSON or a 32-byte hex scalar",
    )
    tsl_p = parsers["tsl-entry"]
    tsl_p.add_argument("--issuer", required=True, metavar="URL", help="the Verifier's issuer")
    tsl_p.add_argument("--url", required=True, metavar="URL", help="the broker's public URL")
    tsl_p.add_argument(
        "--redirect-uri", required=True, action="append", metavar="URL", help="repeatable"
    )
    tsl_p.add_argument("--post-logout-uri", action="append", metavar="URL", help="repeatable")
    tsl_p.add_argument(
        "--jwks-uri",
        metavar="URL",
        help="jwkSetUrl = the broker's own key set (e.g. https://broker.example.org"
        "/.well-known/jwks.json) instead of {issuer}/oidc/did/{did}",
    )
    tsl_p.add_argument(
        "--wrap",
        action="store_true",
        help="print the entry under 'clients:', as the trust-framework file lists it",
    )
    keys_credential.register(sub, deps, common)
    keys_init_token.register(sub, deps)
    keys_rotate.register(sub, deps, common, rotation)
    for name in ("destroy", "adopt"):
        parsers[name].add_argument(
            "--yes", action="store_true", help="do not ask to type the did (for scripts)"
        )
    verify_p = sub.add_parser(
        "audit-verify",
        help="verify the audit log's hash chain",
        description="verify the audit log's hash chain; report the first broken record",
    )
    verify_p.add_argument("--log", metavar="FILE", help="audit log (default: --audit-log)")
    verify_p.add_argument("--audit-log", metavar="FILE", help=argparse.SUPPRESS)
    verify_p.add_argument("--json", action="store_true", help="print one JSON document")
    verify_p.set_defaults(handler=cmd_audit_verify, command="keys audit-verify")
