"""What to check when a PKCS#11 module does not load or a token label is not found.

The two mistakes every newcomer to SoftHSM makes: ``SOFTHSM2_CONF`` unset (SoftHSM then reads
its system configuration and its system token directory, usually not the token just created)
or naming a file that does not exist (the module then fails ``C_Initialize`` with a bare
``CKR_GENERAL_ERROR``); and a token label that differs from the one initialised. The hints name
the variable, the file, and the labels that do exist. Labels and paths are not secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e

from broker.errors import BrokerError

E = TypeVar("E", bound=BrokerError)

SOFTHSM_CONF_ENV = "SOFTHSM2_CONF"
SOFTHSM_SYSTEM_CONF = "/etc/softhsm/softhsm2.conf"
_MAX_LABELS = 10


def is_softhsm(module_path: str) -> bool:
    return "softhsm" in os.path.basename(module_path).lower()


def _tokendir(conf: Path) -> Path | None:
    """``directories.tokendir`` of a SoftHSM configuration file, if it names one."""
    try:
        text = conf.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "directories.tokendir" and value.strip():
            return Path(value.strip())
    return None


def softhsm_conf_hint(environ: Mapping[str, str]) -> str | None:
    """What is wrong with ``SOFTHSM2_CONF``, or None when it names a usable-looking file."""
    value = environ.get(SOFTHSM_CONF_ENV, "")
    if not value:
        return (
            f"{SOFTHSM_CONF_ENV} is unset, so SoftHSM reads {SOFTHSM_SYSTEM_CONF} and its token "
            f"directory: export {SOFTHSM_CONF_ENV}=DIR/softhsm2.conf (the file "
            "'broker keys init-token' or softhsm/init-token.sh wrote)"
        )
    conf = Path(value)
    if not conf.is_file():
        return f"{SOFTHSM_CONF_ENV}={value} names no file"
    tokendir = _tokendir(conf)
    if tokendir is not None and not tokendir.is_dir():
        return f"directories.tokendir {tokendir} (in {SOFTHSM_CONF_ENV}={value}) does not exist"
    return None


def token_labels(lib: Any) -> list[str] | None:
    """Labels of the initialised tokens a loaded ``pkcs11.lib`` sees; None when it cannot
    list them. Call with the module lock held."""
    try:
        labels = []
        for slot in lib.get_slots(token_present=True):
            token = slot.get_token()
            if token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED:
                labels.append(str(token.label).strip())
    except (p11e.PKCS11Error, RuntimeError):
        return None
    return sorted(labels)


def missing_token_hint(
    lib: Any, module_path: str, label: str, environ: Mapping[str, str] = os.environ
) -> str:
    """``tokens here: 'a', 'b'`` (or that there is none), and the SoftHSM configuration problem
    when there is one. Call with the module lock held."""
    parts: list[str] = []
    labels = token_labels(lib)
    if labels is not None:
        if labels:
            shown = ", ".join(repr(x) for x in labels[:_MAX_LABELS])
            more = f" and {len(labels) - _MAX_LABELS} more" if len(labels) > _MAX_LABELS else ""
            parts.append(f"no token is labelled {label!r}; tokens here: {shown}{more}")
        else:
            parts.append("no initialised token in this module")
    if is_softhsm(module_path):
        conf = softhsm_conf_hint(environ)
        if conf is not None:
            parts.append(conf)
    return "; ".join(parts)


def module_load_hint(module_path: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """Why a SoftHSM module may have failed ``C_Initialize``; None for other modules."""
    return softhsm_conf_hint(environ) if is_softhsm(module_path) else None


def with_hint(error: E, hint: str) -> E:
    """The same error class (so the same reason and retryability) with ``; hint`` appended."""
    return type(error)(f"{error.message}; {hint}") if hint else error
