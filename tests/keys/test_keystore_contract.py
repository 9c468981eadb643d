"""One contract suite for every KeyStore: SoftKeyStore (memory) and Pkcs11KeyStore (SoftHSM2)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import InvalidKey, KeyExists, KeyNotFound
from broker.jose import sign_compact, unverified_parts
from broker.keys.api import ES256, KeyDeleter, KeyStore
from broker.keys.didkey import did_from_public_key, public_jwk
from broker.keys.importing import load_private_key
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.soft import SoftKeyStore
from tests.keys.helpers import verify_es256_raw, verify_jws_with_jwcrypto

ATTRIBUTE_NAMES = {
    "sensitive",
    "extractable",
    "never_extractable",
    "always_sensitive",
    "local",
    "token",
    "private",
    "sign",
    "decrypt",
    "derive",
    "unwrap",
}


@pytest.fixture(
    params=["soft", pytest.param("pkcs11", marks=pytest.mark.softhsm)],
)
def store(request: pytest.FixtureRequest) -> Iterator[KeyStore]:
    if request.param == "soft":
        yield SoftKeyStore()
        return
    hsm: Pkcs11KeyStore = request.getfixturevalue("hsm_store")
    before = {info.label for info in hsm.list()}
    yield hsm
    for info in hsm.list():  # leave the shared token as we found it
        if info.label not in before:
            hsm.delete(info.label)


def _label() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


def _deleter(store: KeyStore) -> KeyDeleter:
    assert isinstance(store, SoftKeyStore | Pkcs11KeyStore)
    return store


def test_generate_get_list(store: KeyStore) -> None:
    label = _label()
    info = store.generate(label, b"\x01\x02")
    assert info.label == label
    assert info.key_id == b"\x01\x02"
    assert info.did.startswith("did:key:zDn")
    assert info.kid == info.did
    assert set(info.attributes) == ATTRIBUTE_NAMES
    assert info.attributes["sign"] is True
    got = store.get(label)
    assert got.did == info.did
    assert got.key_id == info.key_id
    assert got.uri == info.uri
    listed = {i.label: i for i in store.list()}
    assert listed[label].did == info.did


def test_generate_twice_raises_key_exists_and_keeps_the_first(store: KeyStore) -> None:
    label = _label()
    first = store.generate(label, b"\x01")
    with pytest.raises(KeyExists):
        store.generate(label, b"\x02")
    assert store.get(label).did == first.did


def test_missing_key_raises_key_not_found(store: KeyStore) -> None:
    label = _label()
    with pytest.raises(KeyNotFound):
        store.get(label)
    with pytest.raises(KeyNotFound):
        store.signer(label)
    with pytest.raises(KeyNotFound):
        _deleter(store).delete(label)


def test_delete_removes_the_key(store: KeyStore) -> None:
    label = _label()
    store.generate(label, b"\x07")
    _deleter(store).delete(label)
    with pytest.raises(KeyNotFound):
        store.get(label)
    assert label not in {i.label for i in store.list()}


def test_sign_verifies_with_did_derived_key(store: KeyStore) -> None:
    label = _label()
    info = store.generate(label, b"\x03")
    signer = store.signer(label)
    assert signer.kid == info.did
    assert signer.alg == ES256
    assert signer.mechanism
    for message in (b"", b"hello", b"x" * 10_000):
        signature = signer.sign(message)
        assert len(signature) == 64
        assert verify_es256_raw(info.did, message, signature)
    assert not verify_es256_raw(info.did, b"other", signer.sign(b"hello"))


def test_jws_sign_compact_verifies_in_jwcrypto(store: KeyStore) -> None:
    label = _label()
    store.generate(label, b"\x04")
    signer = store.signer(label)
    claims = {"iss": signer.kid, "aud": "https://verifier.example", "n": 1}
    compact = sign_compact(signer, claims)
    header, _ = unverified_parts(compact)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": signer.kid}
    assert verify_jws_with_jwcrypto(compact, signer.kid) == claims


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _jwk_dict(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    jwk = public_jwk(key.public_key())
    d = key.private_numbers().private_value.to_bytes(32, "big")
    jwk["d"] = base64.urlsafe_b64encode(d).rstrip(b"=").decode()
    return jwk


@pytest.mark.parametrize("form", ["pem", "jwk-dict", "jwk-text", "hex"])
def test_import_each_format_keeps_the_did(store: KeyStore, form: str) -> None:
    source = ec.generate_private_key(ec.SECP256R1())
    text: str | dict[str, str]
    if form == "pem":
        text = _pem(source)
    elif form == "jwk-dict":
        text = _jwk_dict(source)
    elif form == "jwk-text":
        text = json.dumps(_jwk_dict(source))
    else:
        text = source.private_numbers().private_value.to_bytes(32, "big").hex()
    key = load_private_key(text)
    label = _label()
    info = store.import_key(label, b"\x05", key)
    expected = did_from_public_key(source.public_key())
    assert info.did == expected
    assert store.get(label).did == expected
    signature = store.signer(label).sign(b"imported")
    assert verify_es256_raw(expected, b"imported", signature)


def test_import_rejects_other_curves_and_keeps_nothing(store: KeyStore) -> None:
    label = _label()
    with pytest.raises(InvalidKey):
        store.import_key(label, b"\x06", ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(KeyNotFound):
        store.get(label)


def test_import_over_existing_label_raises_key_exists(store: KeyStore) -> None:
    label = _label()
    original = store.generate(label, b"\x08")
    with pytest.raises(KeyExists):
        store.import_key(label, b"\x09", ec.generate_private_key(ec.SECP256R1()))
    assert store.get(label).did == original.did
