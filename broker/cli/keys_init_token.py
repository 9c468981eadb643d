"""``broker keys init-token --token LABEL --so-pin-file F --pin-file F [--softhsm-conf PATH]``.

Initialises a PKCS#11 token (``C_InitToken`` + ``C_InitPIN``, :mod:`broker.keys.inittoken`) with
the PINs read from files, never from argv. Idempotent: a token already labelled ``LABEL`` is left
alone. Audited like every ceremony (``keys.init_token``, key URI ``pkcs11:token=LABEL``).

``--softhsm-conf PATH`` (SoftHSM only): the configuration to use, written when missing with its
token directory ``tokens/`` next to it; the command sets ``SOFTHSM2_CONF`` for itself and prints
the ``export`` line every later command needs.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

from broker.cli.keys_audited import (
    AUDIT_LOG_ENV,
    DEFAULT_AUDIT_LOG,
    Deps,
    Facts,
    Result,
    run_audited,
)
from broker.cli.keys_token import RefusePinOnArgv
from broker.keys.inittoken import ensure_softhsm_conf, init_token, read_init_pin
from broker.keys.pkcs11 import lib as pkcs11_lib
from broker.keys.pkcs11.hints import SOFTHSM_CONF_ENV
from broker.keys.uri import KeyRef

ACTION = "keys.init_token"


def cmd_init_token(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    label: str = args.token
    facts.key_uri = KeyRef(token=label).to_uri()
    so_pin = read_init_pin(args.so_pin_file, "SO PIN")
    user_pin = read_init_pin(args.pin_file, "user PIN")
    conf: Path | None = None
    written = False
    if args.softhsm_conf:
        conf = Path(args.softhsm_conf).absolute()
        written = ensure_softhsm_conf(conf)
        # SoftHSM reads it in C_Initialize, when the module is first loaded below.
        os.environ[SOFTHSM_CONF_ENV] = str(conf)
    module = args.module or pkcs11_lib.default_module_path()
    created = init_token(module, label, so_pin, user_pin)
    del so_pin, user_pin
    document = {
        "token": label,
        "initialised": created,
        "module": module,
        "softhsm_conf": str(conf) if conf is not None else os.environ.get(SOFTHSM_CONF_ENV),
        "softhsm_conf_written": written,
    }
    state = "initialised" if created else "already present, left alone"
    lines = [f"token {label!r} {state} ({module})"]
    if conf is not None:
        lines.append(f"{'wrote' if written else 'using'} {conf}; every later command needs:")
        lines.append(f"export {SOFTHSM_CONF_ENV}={conf}")
    return document, "\n".join(lines) + "\n"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], deps: Deps) -> None:
    """Add ``keys init-token`` to the ``keys`` group."""
    help_text = "initialise a PKCS#11 token (PINs from files); idempotent"
    p = sub.add_parser("init-token", help=help_text, description=help_text)
    p.add_argument(
        "--pin",
        "--pin-value",
        "--so-pin",
        nargs="?",
        action=RefusePinOnArgv,
        help=argparse.SUPPRESS,
    )
    p.add_argument("--token", required=True, metavar="LABEL", help="the token label (1-32 bytes)")
    p.add_argument("--so-pin-file", required=True, metavar="FILE", help="file holding the SO PIN")
    p.add_argument("--pin-file", required=True, metavar="FILE", help="file holding the user PIN")
    p.add_argument(
        "--softhsm-conf",
        metavar="PATH",
        help="SoftHSM2 configuration to use; written when missing, tokens in PATH's dir/tokens "
        f"(default: ${SOFTHSM_CONF_ENV})",
    )
    p.add_argument("--module", metavar="PATH", help="PKCS#11 module (default: SoftHSM2)")
    p.add_argument(
        "--audit-log",
        metavar="FILE",
        help=f"audit log (default: ${AUDIT_LOG_ENV} or ./{DEFAULT_AUDIT_LOG})",
    )
    p.add_argument("--operator", help="who runs the ceremony (default: $SUDO_USER or $USER)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(
        handler=functools.partial(run_audited, deps, ACTION, cmd_init_token),
        command="keys init-token",
    )
