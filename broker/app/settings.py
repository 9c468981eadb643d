"""The settings as serve, doctor and the CLI load them: :mod:`broker.config`'s reader given the
key custody checks of :mod:`broker.keys` (the RFC 7512 key URI, the PIN file, the did:key
``client_id``).

``config`` imports nothing of ``keys``; this module, above both, joins them, so every command
that reads the file names the same first problem. It imports no gRPC (the doctor uses it).
"""

from __future__ import annotations

from pathlib import Path

from broker.config import KeyChecks, Settings
from broker.config import load_settings as load_with
from broker.keys.didkey import decode_did_key
from broker.keys.kid import KidFormat
from broker.keys.uri import KeyRef, check_pin_file, parse_key_uri


class KeyCustodyChecks:
    """:class:`broker.config.KeyChecks` by the keys package's parsers."""

    def parse_key_uri(self, uri: str) -> KeyRef:
        return parse_key_uri(uri)

    def check_pin_file(self, path: Path) -> None:
        check_pin_file(path)

    def did_key_type(self, did: str) -> str:
        return decode_did_key(did).key_type


KEY_CHECKS: KeyChecks = KeyCustodyChecks()


def load_settings(path: str | Path, *, check_files: bool = True) -> Settings:
    """:func:`broker.config.load_settings` with :data:`KEY_CHECKS`. Raises
    :class:`broker.errors.ConfigError`."""
    return load_with(path, key_checks=KEY_CHECKS, check_files=check_files)


def kid_format(settings: Settings) -> KidFormat:
    """``[oauth].kid_format`` as the keys package's :class:`KidFormat`."""
    return KidFormat(settings.oauth.kid_format)
