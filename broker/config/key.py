"""``[key]``: the client key in the PKCS#11 token and the HSM resilience settings.

The key URI is parsed by the keys package's one RFC 7512 parser, passed in as
:class:`broker.config.ports.KeyChecks`; secrets are only ever paths to files: a ``pin-value``
attribute is refused before parsing and the URI is never echoed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from broker.config.ports import KeyChecks
from broker.config.section import Section
from broker.errors import ConfigError, InvalidKeyUri

# The file's defaults of the HSM resilience keys: those of broker.keys.health.HsmHealth
# (busy retries, operation timeout, the recovery probe's back-off), which
# tests/config/test_key_hsm.py holds equal.
DEFAULT_BUSY_RETRIES = 3
DEFAULT_SIGN_TIMEOUT = 10.0
DEFAULT_PROBE_INITIAL = 2.0
DEFAULT_PROBE_MAX = 30.0


@dataclass(frozen=True)
class KeySettings:
    """``[key]``: the client key in the PKCS#11 token.

    ``uri`` is an RFC 7512 URI such as
    ``pkcs11:token=broker;object=client-2026?pin-source=file:/run/secrets/user_pin``; the keys
    package parses it. ``pin_file`` is the file its ``pin-source`` names (already resolved).

    HSM resilience (:class:`broker.keys.health.HsmHealth`, TEST-CATALOGUE D02, D07, D08):
    ``busy_retries`` retries of a busy HSM; ``sign_timeout`` seconds one HSM call (and the wait
    for the HSM lock) may take, None for no bound (``0`` in the file); the recovery probe of a
    DOWN HSM waits ``probe_initial`` seconds, then x1.5 per attempt up to ``probe_max``.
    """

    uri: str
    pin_file: Path
    sealing_key_label: str | None = None
    busy_retries: int = DEFAULT_BUSY_RETRIES
    sign_timeout: float | None = DEFAULT_SIGN_TIMEOUT
    probe_initial: float = DEFAULT_PROBE_INITIAL
    probe_max: float = DEFAULT_PROBE_MAX


def _key_uri(section: Section, checks: KeyChecks) -> tuple[str, Path]:
    """Parse the key URI with ``checks`` (the keys package's parser) and refuse secrets in it."""
    uri = section.req_string("uri")
    name = section.key("uri")
    if re.search(r"pin(-|%2d)value", uri, flags=re.IGNORECASE):
        # Checked before parsing, and the URI is never echoed: it holds the PIN.
        raise ConfigError(
            f"{name} must not contain pin-value; put the PIN in a file and use "
            "pin-source=file:/path/to/pin"
        )
    try:
        ref = checks.parse_key_uri(uri)
    except InvalidKeyUri as exc:
        raise ConfigError(f"{name}: {exc.message}") from exc
    if ref.object is None:
        raise ConfigError(f"{name} must name the key: 'object=' missing")
    pin_file = ref.pin_path()
    if pin_file is None:
        raise ConfigError(
            f"{name} needs pin-source=file:/path/to/pin (the PIN is read from a file)"
        )
    if section.check_files and not pin_file.is_file():
        raise ConfigError(
            f"{name} pin-source: file {pin_file} does not exist or is not a regular file"
        )
    if section.check_files:
        checks.check_pin_file(pin_file)  # InsecurePinFile when group or others may read or write it
    return uri, pin_file


MIN_SIGN_TIMEOUT = 0.05  # seconds; below this a healthy SoftHSM signature could time out


def parse_key(section: Section, checks: KeyChecks) -> KeySettings:
    uri, pin_file = _key_uri(section, checks)
    sign_timeout: float | None = section.number(
        "sign_timeout", DEFAULT_SIGN_TIMEOUT, low=0.0, high=300.0
    )
    if sign_timeout == 0:
        sign_timeout = None
    elif sign_timeout is not None and sign_timeout < MIN_SIGN_TIMEOUT:
        raise ConfigError(
            f"{section.key('sign_timeout')} must be 0 (no bound) or at least "
            f"{MIN_SIGN_TIMEOUT:g} seconds"
        )
    probe_initial = section.number("probe_initial", DEFAULT_PROBE_INITIAL, low=0.1, high=300.0)
    probe_max = section.number("probe_max", DEFAULT_PROBE_MAX, low=0.1, high=3600.0)
    if probe_max < probe_initial:
        raise ConfigError(
            f"{section.key('probe_max')} must be at least {section.key('probe_initial')}"
        )
    return KeySettings(
        uri=uri,
        pin_file=pin_file,
        sealing_key_label=section.string("sealing_key_label"),
        busy_retries=section.integer("busy_retries", DEFAULT_BUSY_RETRIES, low=0, high=10),
        sign_timeout=sign_timeout,
        probe_initial=probe_initial,
        probe_max=probe_max,
    )
