"""run_selftest: the token's signature must verify with the did:key public key (D10/D11 shape)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from broker.ceremony.selftest import run_selftest
from broker.errors import SelfTestFailed
from broker.keys.soft import SoftKeyStore
from tests.clock import FakeClock


@dataclass
class _DerSigner:
    """Returns DER instead of the JOSE r||s: the classic mistake the self-test must catch."""

    key: ec.EllipticCurvePrivateKey
    kid: str
    alg: str = "ES256"
    mechanism: str = "test-der"

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message, ec.ECDSA(hashes.SHA256()))


def _store_with_key() -> SoftKeyStore:
    store = SoftKeyStore()
    store.generate("k", b"\x01")
    return store


def test_good_signer_passes() -> None:
    store = _store_with_key()
    info = store.get("k")
    report = run_selftest(store.signer("k"), info, clock=FakeClock())
    assert report.did == info.did and report.kid == info.did
    assert report.jws.count(".") == 2


def test_der_signature_fails() -> None:
    store = _store_with_key()
    info = store.get("k")
    der_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SelfTestFailed, match="ES256 needs 64 bytes"):
        run_selftest(_DerSigner(der_key, info.did), info, clock=FakeClock())


def test_kid_mismatch_fails() -> None:
    store = _store_with_key()
    store.generate("other", b"\x02")
    with pytest.raises(SelfTestFailed, match="kid"):
        run_selftest(store.signer("other"), store.get("k"), clock=FakeClock())


def test_wrong_alg_fails() -> None:
    store = _store_with_key()
    info = store.get("k")
    signer = _DerSigner(ec.generate_private_key(ec.SECP256R1()), info.did, alg="ES384")
    with pytest.raises(SelfTestFailed, match="ES384"):
        run_selftest(signer, info, clock=FakeClock())
