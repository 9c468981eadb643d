"""Initialise a PKCS#11 token by label with PINs read from files, never from argv.

``python -m broker.keys.inittoken --module M --label L --so-pin-file F --user-pin-file F``; the
audited operator command is ``broker keys init-token`` (:mod:`broker.cli.keys_init_token`).

``softhsm2-util --init-token`` takes the PINs on its command line (visible in ``ps``) and refuses
to read them from a non-terminal stdin, so this helper calls ``C_InitToken`` (through ``ctypes``:
python-pkcs11 0.10 does not expose it) and ``C_InitPIN`` (python-pkcs11, SO session) itself.
Idempotent: a token that already carries the label is left alone. Exit status 0 = ready,
2 = bad input or PKCS#11 failure (message on stderr, never a PIN).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

import pkcs11
import pkcs11.exceptions as p11e

from broker.errors import BrokerError, ConfigError, KeyStoreError
from broker.keys.pkcs11 import lib as pkcs11_lib
from broker.keys.pkcs11.recovery import to_broker_error
from broker.keys.uri import read_pin_file

CKR_OK = 0


SOFTHSM_CONF_TEMPLATE = """# SoftHSM2 configuration written by 'broker keys init-token'.
directories.tokendir = {tokendir}
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
"""


def read_init_pin(path: str, what: str) -> str:
    """A PIN for token initialisation, from a file (mode checked), 4 to 255 bytes."""
    pin = read_pin_file(Path(path))
    if not 4 <= len(pin.encode("utf-8")) <= 255:
        raise ConfigError(f"{what} in {path} must be 4 to 255 bytes long")
    return pin


def ensure_softhsm_conf(conf: Path) -> bool:
    """Write a SoftHSM2 configuration at ``conf`` whose token directory is ``tokens`` next to
    it (both directories 0700), unless ``conf`` exists; True when written. Never the system
    token directory."""
    if conf.exists():
        if not conf.is_file():
            raise ConfigError(f"--softhsm-conf {conf} exists and is not a file")
        return False
    tokendir = conf.absolute().parent / "tokens"
    try:
        conf.absolute().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tokendir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(SOFTHSM_CONF_TEMPLATE.format(tokendir=tokendir))
    except OSError as exc:
        raise ConfigError(f"cannot write the SoftHSM configuration {conf}: {exc.strerror}") from exc
    return True


def token_exists(module_path: str, label: str) -> bool:
    """Whether an initialised token carries ``label``."""
    loaded = pkcs11_lib.load(module_path)
    with loaded.lock:
        try:
            loaded.lib.get_token(token_label=label)
        except p11e.NoSuchToken:
            return False
        except p11e.MultipleTokensReturned:
            raise KeyStoreError(f"more than one token is labelled {label!r}") from None
        return True


def init_token(module_path: str, label: str, so_pin: str, user_pin: str) -> bool:
    """Initialise the first free slot as ``label`` and set its user PIN.

    Returns False (and changes nothing) when a token labelled ``label`` already exists.
    """
    raw_label = label.encode("utf-8")
    if not raw_label or len(raw_label) > 32:
        raise ConfigError("a token label must be 1 to 32 bytes")
    if token_exists(module_path, label):
        return False
    loaded = pkcs11_lib.load(module_path)
    with loaded.lock:
        try:
            free = [
                slot
                for slot in loaded.lib.get_slots(token_present=True)
                if not slot.get_token().flags & pkcs11.TokenFlag.TOKEN_INITIALIZED
            ]
        except p11e.PKCS11Error as exc:
            raise to_broker_error(exc, "listing slots") from exc
        if not free:
            raise KeyStoreError("no free (uninitialised) token slot")
        cdll = ctypes.CDLL(loaded.path)
        so = so_pin.encode("utf-8")
        rv = cdll.C_InitToken(
            ctypes.c_ulong(free[0].slot_id),
            ctypes.c_char_p(so),
            ctypes.c_ulong(len(so)),
            ctypes.c_char_p(raw_label.ljust(32, b" ")),
        )
        if rv != CKR_OK:
            raise KeyStoreError(f"C_InitToken failed with CKR 0x{rv:x}")
        try:
            token = loaded.lib.get_token(token_label=label)
            with token.open(rw=True, so_pin=so_pin) as session:
                session.init_pin(user_pin)
        except p11e.PKCS11Error as exc:
            raise to_broker_error(exc, "setting the user PIN") from exc
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.keys.inittoken", description=__doc__)
    parser.add_argument("--module", default=None, help="PKCS#11 module (default: SoftHSM2)")
    parser.add_argument("--label", required=True)
    parser.add_argument("--so-pin-file", required=True)
    parser.add_argument("--user-pin-file", required=True)
    args = parser.parse_args(argv)
    try:
        module = args.module or pkcs11_lib.default_module_path()
        so_pin = read_init_pin(args.so_pin_file, "SO PIN")
        user_pin = read_init_pin(args.user_pin_file, "user PIN")
        created = init_token(module, args.label, so_pin, user_pin)
    except BrokerError as exc:
        print(f"inittoken: {exc}", file=sys.stderr)
        return 2
    print(f"token {args.label!r} {'initialised' if created else 'already present'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
