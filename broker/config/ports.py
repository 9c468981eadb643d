"""What reading the file asks of key custody: the one port of ``config``.

``config`` is schema and loading and imports nothing of :mod:`broker.keys` (docs/design-notes.md,
"Package walls"). The checks that need the keys package (the RFC 7512 key URI, the PIN file's
mode, the did:key ``client_id``) are passed in by whoever loads the file:
:func:`broker.app.settings.load_settings`, which serve, doctor and the CLI use. They still run
while ``[oauth]`` and ``[key]`` are read, so a file with several problems names the same first
one whichever of them loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class ParsedKeyUri(Protocol):
    """The parts of a parsed key URI that ``[key]`` checks (:class:`broker.keys.uri.KeyRef`)."""

    @property
    def object(self) -> str | None: ...

    def pin_path(self) -> Path | None: ...


class KeyChecks(Protocol):
    """The key custody checks of ``[key].uri`` and ``[oauth].client_id``."""

    def parse_key_uri(self, uri: str) -> ParsedKeyUri:
        """``uri`` parsed as RFC 7512; :class:`broker.errors.InvalidKeyUri` (whose message does not
        echo the URI) when it is not one."""
        ...

    def check_pin_file(self, path: Path) -> None:
        """:class:`broker.errors.InsecurePinFile` when group or others may read or write the
        existing file ``path``."""
        ...

    def did_key_type(self, did: str) -> str:
        """The key type of the did:key ``did`` (``"P-256"``, ...);
        :class:`broker.errors.DidError` when it does not decode."""
        ...
