"""Half-made signing keys for tests: one object of a P-256 pair, made with python-pkcs11 directly.

:func:`create_half` makes only the public (or only the private) object of a fresh P-256 key in a
logged-in session, as an import killed between its two ``C_CreateObject`` calls leaves it. As a
program (``python -m tests.keys.halves TOKEN PIN_FILE LABEL ID_HEX public|private``, with
``SOFTHSM2_CONF`` set) it does the same on a token another process uses; the PIN is read from the
file, never taken from argv.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import Attribute, KeyType, ObjectClass

from broker.keys.pkcs11 import lib as pkcs11_lib
from broker.keys.pkcs11.objects import P256_PARAMS


def create_half(session: Any, label: str, key_id: bytes, present: str) -> None:
    """Create only the ``present`` ("public" or "private") object of a new P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    common = {
        Attribute.TOKEN: True,
        Attribute.KEY_TYPE: KeyType.EC,
        Attribute.EC_PARAMS: P256_PARAMS,
        Attribute.ID: key_id,
        Attribute.LABEL: label,
    }
    if present == "public":
        point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.EC_POINT: b"\x04" + bytes([len(point)]) + point,
                Attribute.VERIFY: True,
                **common,
            }
        )
    elif present == "private":
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.VALUE: key.private_numbers().private_value.to_bytes(32, "big"),
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.SIGN: True,
                **common,
            }
        )
    else:
        raise ValueError(f"present must be 'public' or 'private', not {present!r}")


def main(argv: list[str]) -> int:
    token_label, pin_file, label, id_hex, present = argv
    pin = Path(pin_file).read_text().strip()
    loaded = pkcs11_lib.load(pkcs11_lib.default_module_path())
    with loaded.lock:
        token = loaded.lib.get_token(token_label=token_label)
        with token.open(rw=True, user_pin=pin) as session:
            create_half(session, label, bytes.fromhex(id_hex), present)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
