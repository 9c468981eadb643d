"""Which key store a ceremony talks to: the seam between the commands and key custody.

The commands see a :class:`KeyBackend`: it parses a key URI into a :class:`KeyTarget` (what
``object=`` and ``id=`` name, and the URI as printable text without any PIN), opens the
:class:`CeremonyStore` that holds it, and decodes private keys for ``import``. Production uses
:class:`Pkcs11Backend` (RFC 7512 URIs, a PKCS#11 token); tests may inject another backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import InvalidKeyUri
from broker.keys.api import HalfKey, KeyDeleter, KeyStore


@dataclass(frozen=True)
class KeyTarget:
    """What a key URI names. ``uri`` is printable: it never carries a PIN."""

    uri: str
    label: str | None  # the URI's object= (CKA_LABEL)
    key_id: bytes | None  # the URI's id= (CKA_ID)
    ref: object = None  # the backend's own parsed reference (e.g. a KeyRef)
    token: str = ""  # the URI's token= (CKA_TOKEN_INFO label)


class CeremonyStore(KeyStore, KeyDeleter, Protocol):
    """A key store that can also delete keys and create the AES sealing key."""

    def generate_sealing_key(self, label: str, key_id: bytes) -> object: ...

    def list_sealing_keys(self) -> list[tuple[str, bytes]]:
        """``(label, id)`` of every AES secret key in the token, in label order."""
        ...

    def list_half_keys(self) -> list[HalfKey]:
        """The signing keys of which only the public or only the private object is in the
        token (a creation cut off between the two), in label order."""
        ...


class KeyBackend(Protocol):
    def parse(self, text: str) -> KeyTarget:
        """Parse a key URI; raise :class:`broker.errors.InvalidKeyUri` naming the bad part."""
        ...

    def open(self, target: KeyTarget, *, pin_file: str | None) -> CeremonyStore:
        """Open (and log in to) the store holding ``target``. The PIN comes from a file only."""
        ...

    def load_private_key(self, text: str) -> ec.EllipticCurvePrivateKey:
        """Decode a P-256 private key from PEM, JWK JSON or a 32-byte hex scalar."""
        ...

    def key_uri(self, target: KeyTarget, key_id: bytes) -> str:
        """The printable URI (no PIN) of the signing key ``target`` names, with ``id=key_id``."""
        ...

    def sealing_key_uri(self, target: KeyTarget, key_id: bytes) -> str:
        """The printable URI (no PIN) of the AES key ``target`` names, with ``id=key_id`` and
        RFC 7512 ``type=secret-key``."""
        ...


def refuse_inline_pin(text: str) -> None:
    """A key URI given on argv or in the environment must not carry the PIN itself.

    RFC 7512 ``pin-value`` would put the PIN in argv (visible in ``ps``) or the environment;
    the broker accepts ``pin-source=file:`` only. The message never repeats the URI.
    """
    for attr in re.split(r"[;?&]", text):
        name = unquote(attr.partition("=")[0]).strip().lower()
        if name == "pin-value":
            raise InvalidKeyUri(
                "the key URI carries pin-value: never put a PIN in a URI, use pin-source=file:"
            )
