"""Pkcs11KeyStore on a real SoftHSM2 token: custody (I01, I02), signatures (D10), locking,
recovery (D01, D03, D04, D05, D06, re-initialised library), sealing, spans and hygiene."""

from __future__ import annotations

import contextlib
import ctypes
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from jwcrypto import jwk as jwcrypto_jwk
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from broker.errors import (
    HsmUnavailable,
    InvalidArgument,
    InvalidKey,
    KeyExists,
    KeyNotFound,
    KeyStoreError,
    PinIncorrect,
    PinLocked,
    TokenNotPresent,
)
from broker.jose import sign_compact
from broker.keys.didkey import did_from_public_key, jwk_from_did, public_key_from_did
from broker.keys.inittoken import init_token
from broker.keys.pkcs11.objects import P256_PARAMS
from broker.keys.pkcs11.signer import Pkcs11Signer
from broker.keys.pkcs11.store import Pkcs11KeyStore, ec_point_to_public_key
from broker.keys.uri import KeyRef, parse_key_uri
from tests.conftest import SoftHsmEnv
from tests.keys.helpers import verify_es256_raw, verify_jws_with_jwcrypto

pytestmark = pytest.mark.softhsm


class CK_MECHANISM(ctypes.Structure):
    _fields_ = [
        ("mechanism", ctypes.c_ulong),
        ("parameter", ctypes.c_void_p),
        ("parameter_len", ctypes.c_ulong),
    ]


def _cdll(store: Pkcs11KeyStore) -> ctypes.CDLL:
    """The already loaded module, to break things behind the store's back."""
    return ctypes.CDLL(store.module_path)


@pytest.fixture
def label(hsm_store: Pkcs11KeyStore) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(KeyNotFound):
        hsm_store.delete(name)


@pytest.fixture
def key(hsm_store: Pkcs11KeyStore, label: str) -> str:
    hsm_store.generate(label, b"\x42")
    return label


def _raw(store: Pkcs11KeyStore, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(session)`` on the store's own session under its lock (test seam)."""
    return store.session.run("test", fn)


# --- I01 / I02 -------------------------------------------------------------------------------


def test_i01_generated_key_attributes_and_extraction_fails(
    hsm_store: Pkcs11KeyStore, label: str
) -> None:
    info = hsm_store.generate(label, b"\x01\x02")
    assert info.attributes == {
        "sensitive": True,
        "extractable": False,
        "never_extractable": True,
        "always_sensitive": True,
        "local": True,
        "token": True,
        "private": True,
        "sign": True,
        "decrypt": False,
        "derive": False,
        "unwrap": False,
    }
    assert parse_key_uri(info.uri) == KeyRef(
        token=hsm_store.token_label,
        object=label,
        id=b"\x01\x02",
        module_path=hsm_store._module_path,
    )

    def attempts(session: Any) -> list[type[BaseException]]:
        priv = session.get_key(ObjectClass.PRIVATE_KEY, label=label)
        assert priv[Attribute.EC_PARAMS] == P256_PARAMS  # the P-256 OID
        assert priv[Attribute.ID] == b"\x01\x02"
        pub = session.get_key(ObjectClass.PUBLIC_KEY, label=label)
        assert pub[Attribute.ID] == b"\x01\x02"
        failures: list[type[BaseException]] = []
        with pytest.raises(p11e.AttributeSensitive) as read:
            priv[Attribute.VALUE]
        failures.append(read.type)
        wrapping = session.generate_key(
            KeyType.AES,
            256,
            store=False,
            capabilities=0,
            template={Attribute.WRAP: True, Attribute.EXTRACTABLE: False},
        )
        with pytest.raises(p11e.KeyUnextractable) as wrap:
            wrapping.wrap_key(priv, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        failures.append(wrap.type)
        return failures

    assert _raw(hsm_store, attempts) == [p11e.AttributeSensitive, p11e.KeyUnextractable]


def test_i02_did_from_ec_point_round_trip(hsm_store: Pkcs11KeyStore, key: str) -> None:
    point = _raw(
        hsm_store,
        lambda s: bytes(s.get_key(ObjectClass.PUBLIC_KEY, label=key)[Attribute.EC_POINT]),
    )
    assert point[:2] == b"\x04\x41"  # DER OCTET STRING around the 65-byte point
    public = ec_point_to_public_key(point)
    info = hsm_store.get(key)
    assert did_from_public_key(public) == info.did
    assert info.did.startswith("did:key:zDn")
    assert public_key_from_did(info.did).public_numbers() == public.public_numbers()
    thumb = jwcrypto_jwk.JWK(**jwk_from_did(info.did)).thumbprint()
    assert thumb == jwcrypto_jwk.JWK(**info.public_jwk()).thumbprint()
    compact = sign_compact(hsm_store.signer(key), {"sub": "x"})
    assert verify_jws_with_jwcrypto(compact, info.did) == {"sub": "x"}


def test_ec_point_forms() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    raw = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    comp = public.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    for form in (raw, b"\x04\x41" + raw, comp, b"\x04\x21" + comp):
        assert ec_point_to_public_key(form).public_numbers() == public.public_numbers()
    for bad in (b"", b"\x04" * 10, b"\x04\x41" + b"\x05" + raw[1:], raw[:-1]):
        with pytest.raises(InvalidKey):
            ec_point_to_public_key(bad)


# --- D10 and locking -------------------------------------------------------------------------


def test_d10_ten_thousand_signatures_raw_64_bytes_all_verify(
    hsm_store: Pkcs11KeyStore, key: str
) -> None:
    signer = hsm_store.signer(key)
    assert signer.mechanism in {"CKM_ECDSA", "CKM_ECDSA_SHA256"}
    did = signer.kid
    leading_zero_r = leading_zero_s = 0
    for i in range(10_000):
        message = i.to_bytes(4, "big") + b"d10"
        signature = signer.sign(message)
        assert len(signature) == 64, i
        assert verify_es256_raw(did, message, signature), i  # raw r||s, never DER
        leading_zero_r += signature[0] == 0
        leading_zero_s += signature[32] == 0
    # About 1 in 256 of r and of s start with a zero byte: those were zero-padded, not shortened.
    assert leading_zero_r > 0
    assert leading_zero_s > 0


def test_threaded_stress_8_threads_x_500_all_verify(hsm_store: Pkcs11KeyStore, key: str) -> None:
    signer = hsm_store.signer(key)
    results: list[list[tuple[bytes, bytes]]] = [[] for _ in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(500):
                message = f"{n}:{i}".encode()
                results[n].append((message, signer.sign(message)))
        except BaseException as exc:  # collected and re-raised by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    pairs = [pair for chunk in results for pair in chunk]
    assert len(pairs) == 4000
    assert all(verify_es256_raw(signer.kid, m, s) for m, s in pairs)


def test_sign_span_carries_kid_and_mechanism_only(softhsm_env: SoftHsmEnv, key: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = Pkcs11KeyStore(
        softhsm_env.module_path,
        softhsm_env.token_label,
        softhsm_env.pin,
        tracer_provider=provider,
    )
    signer = store.signer(key)
    signer.sign(b"spanned")
    (span,) = exporter.get_finished_spans()
    assert span.name == "keys.sign"
    assert dict(span.attributes or {}) == {"kid": signer.kid, "mechanism": signer.mechanism}
    assert span.status.is_ok
    store.delete(key)
    with pytest.raises(KeyNotFound):
        signer.sign(b"gone")
    failed = exporter.get_finished_spans()[-1]
    assert failed.name == "keys.sign"
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert softhsm_env.pin not in str(failed.to_json())
    store.close()


# --- recovery --------------------------------------------------------------------------------


def test_d01_session_closed_out_of_band_recovers(hsm_store: Pkcs11KeyStore, key: str) -> None:
    signer = hsm_store.signer(key)
    before = hsm_store.session.recoveries
    assert _cdll(hsm_store).C_CloseSession(ctypes.c_ulong(hsm_store.session.current.handle)) == 0
    assert verify_es256_raw(signer.kid, b"after", signer.sign(b"after"))
    assert hsm_store.session.recoveries == before + 1


def test_d01_session_object_closed_recovers(hsm_store: Pkcs11KeyStore, key: str) -> None:
    signer = hsm_store.signer(key)
    before = hsm_store.session.recoveries
    hsm_store.session.current.close()  # C_Logout + C_CloseSession through python-pkcs11
    assert verify_es256_raw(signer.kid, b"after", signer.sign(b"after"))
    assert hsm_store.get(key).did == signer.kid
    assert hsm_store.session.recoveries == before + 1


def test_d04_logout_out_of_band_recovers_sign_and_find(hsm_store: Pkcs11KeyStore, key: str) -> None:
    signer = hsm_store.signer(key)
    lib = _cdll(hsm_store)
    before = hsm_store.session.recoveries
    assert lib.C_Logout(ctypes.c_ulong(hsm_store.session.current.handle)) == 0
    assert verify_es256_raw(signer.kid, b"x", signer.sign(b"x"))
    assert lib.C_Logout(ctypes.c_ulong(hsm_store.session.current.handle)) == 0
    # A search while logged out finds no private objects: it must not say "no such key".
    assert hsm_store.get(key).did == signer.kid
    assert lib.C_Logout(ctypes.c_ulong(hsm_store.session.current.handle)) == 0
    assert key in {i.label for i in hsm_store.list()}
    assert hsm_store.session.recoveries == before + 3


def test_d06_operation_left_active_is_replaced(hsm_store: Pkcs11KeyStore, key: str) -> None:
    signer = hsm_store.signer(key)
    signer.sign(b"warm the handle cache")
    handle = hsm_store.session.handles[(ObjectClass.PRIVATE_KEY, key)].handle
    mech = CK_MECHANISM(int(Mechanism.ECDSA), None, 0)
    rv = _cdll(hsm_store).C_SignInit(
        ctypes.c_ulong(hsm_store.session.current.handle), ctypes.byref(mech), ctypes.c_ulong(handle)
    )
    assert rv == 0  # a sign operation now hangs open on the store's session
    before = hsm_store.session.recoveries
    assert verify_es256_raw(signer.kid, b"y", signer.sign(b"y"))
    assert hsm_store.session.recoveries == before + 1


@pytest.mark.parametrize("how", ["finalize", "reinitialize"])
def test_reinitialised_library_recovers(hsm_store: Pkcs11KeyStore, key: str, how: str) -> None:
    signer = hsm_store.signer(key)
    getattr(hsm_store.session.lib.lib, how)()
    assert verify_es256_raw(signer.kid, b"z", signer.sign(b"z"))
    assert hsm_store.get(key).did == signer.kid


def test_recovery_happens_once_then_hsm_unavailable(
    hsm_store: Pkcs11KeyStore, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = hsm_store.signer(key)
    calls = []

    def broken(session: Any, label: str) -> Any:
        calls.append(label)
        raise p11e.DeviceError()

    monkeypatch.setattr(hsm_store.session, "private_ec", broken)
    with pytest.raises(HsmUnavailable) as info:
        signer.sign(b"never")
    assert info.value.retryable
    assert calls == [key, key]  # first try + exactly one retry after recovery
    monkeypatch.undo()
    assert verify_es256_raw(signer.kid, b"ok", signer.sign(b"ok"))


def test_d05_wrong_pin_is_pin_incorrect_and_not_retried(softhsm_env: SoftHsmEnv) -> None:
    other = f"pin-{uuid.uuid4().hex[:8]}"
    init_token(softhsm_env.module_path, other, "so-pin-1234", "user-pin-1234")
    with pytest.raises(PinIncorrect) as info:
        Pkcs11KeyStore(softhsm_env.module_path, other, "wrong-pin-9999")
    assert not info.value.retryable
    assert "wrong-pin" not in str(info.value)
    with Pkcs11KeyStore(softhsm_env.module_path, other, "user-pin-1234") as good:
        assert good.list() == []
        # The process is now logged in to that token: another PIN is still refused.
        with pytest.raises(PinIncorrect):
            Pkcs11KeyStore(softhsm_env.module_path, other, "wrong-pin-9999")


def test_d05_pin_locked_during_relogin_is_not_retried(
    hsm_store: Pkcs11KeyStore, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = hsm_store.signer(key)
    logins: list[object] = []

    def locked(token: Any) -> Any:
        logins.append(token)
        raise p11e.PinLocked()

    monkeypatch.setattr(hsm_store.session, "login", locked)
    hsm_store.session.current.close()
    with pytest.raises(PinLocked) as info:
        signer.sign(b"locked")
    assert not info.value.retryable
    assert len(logins) == 1
    monkeypatch.undo()
    assert verify_es256_raw(signer.kid, b"back", signer.sign(b"back"))


def test_login_retries_general_error_with_backoff(
    hsm_store: Pkcs11KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("broker.keys.pkcs11.session.time.sleep", sleeps.append)

    class Plain:
        handle = 0xFFFFFF  # no such session: "not logged in"

        def close(self) -> None:
            pass

    class FlakyToken:
        attempts = 0

        def open(self, rw: bool = False, user_pin: str | None = None) -> object:
            if user_pin is None:
                return Plain()
            self.attempts += 1
            if self.attempts < 3:
                raise p11e.GeneralError()
            return "session"

    token = FlakyToken()
    assert hsm_store.session.login(token) == "session"
    assert token.attempts == 3
    assert sleeps == [0.05, 0.1]


def test_d03_missing_token_label(softhsm_env: SoftHsmEnv) -> None:
    with pytest.raises(TokenNotPresent) as info:
        Pkcs11KeyStore(softhsm_env.module_path, "no-such-token", softhsm_env.pin)
    assert info.value.retryable
    assert softhsm_env.pin not in str(info.value)


def test_wrong_curve_and_non_signing_keys_are_invalid(
    hsm_store: Pkcs11KeyStore, label: str
) -> None:
    def make_p384(session: Any) -> None:
        session.generate_keypair(
            KeyType.EC,
            store=True,
            label=label,
            id=b"\x38",
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template={Attribute.EC_PARAMS: encode_named_curve_parameters("secp384r1")},
        )

    _raw(hsm_store, make_p384)
    with pytest.raises(InvalidKey, match="not a P-256"):
        hsm_store.get(label)
    with pytest.raises(InvalidKey, match="not a P-256"):
        hsm_store.signer(label)
    hsm_store.delete(label)

    def make_verify_only(session: Any) -> None:
        session.generate_keypair(
            KeyType.EC,
            store=True,
            label=label,
            id=b"\x39",
            capabilities=0,
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template={Attribute.EC_PARAMS: P256_PARAMS, Attribute.VERIFY: True},
            private_template={Attribute.SIGN: False, Attribute.PRIVATE: True},
        )

    _raw(hsm_store, make_verify_only)
    with pytest.raises(InvalidKey, match="CKA_SIGN"):
        hsm_store.signer(label)


def test_bad_arguments(hsm_store: Pkcs11KeyStore) -> None:
    with pytest.raises(InvalidArgument):
        hsm_store.generate("", b"\x01")
    with pytest.raises(InvalidArgument):
        hsm_store.generate("x", b"")
    with pytest.raises(InvalidArgument):
        hsm_store.get("x" * 300)
    with pytest.raises(InvalidArgument):
        Pkcs11KeyStore(hsm_store.module_path, "broker-test", "")


# --- sealing ---------------------------------------------------------------------------------


def test_sealer_round_trip_wrong_aad_and_tampering(hsm_store: Pkcs11KeyStore, label: str) -> None:
    hsm_store.generate_sealing_key(label, b"\x5e")
    with pytest.raises(KeyExists):
        hsm_store.generate_sealing_key(label, b"\x5f")
    sealer = hsm_store.sealer(label)
    assert sealer.key_label == label
    sealed = sealer.seal(b"refresh-token-value", b"grant-1")
    assert len(sealed) == 12 + len(b"refresh-token-value") + 16
    assert b"refresh-token-value" not in sealed
    assert sealer.open(sealed, b"grant-1") == b"refresh-token-value"
    assert sealer.seal(b"same", b"g") != sealer.seal(b"same", b"g")  # fresh IV every time
    assert sealer.open(sealer.seal(b"", b""), b"") == b""
    with pytest.raises(KeyStoreError, match="does not authenticate"):
        sealer.open(sealed, b"grant-2")
    for index in (0, 12, len(sealed) - 1):  # IV, ciphertext, tag
        tampered = bytearray(sealed)
        tampered[index] ^= 1
        with pytest.raises(KeyStoreError, match="does not authenticate"):
            sealer.open(bytes(tampered), b"grant-1")
    with pytest.raises(KeyStoreError, match="too short"):
        sealer.open(sealed[:20], b"grant-1")
    # Nothing stuck after the failures:
    assert sealer.open(sealed, b"grant-1") == b"refresh-token-value"


def test_sealing_key_attributes_and_other_key_fails(hsm_store: Pkcs11KeyStore, label: str) -> None:
    hsm_store.generate_sealing_key(label, b"\x60")

    def attrs(session: Any) -> dict[str, object]:
        key = session.get_key(ObjectClass.SECRET_KEY, label=label)
        return {
            name: key[attr]
            for name, attr in {
                "sensitive": Attribute.SENSITIVE,
                "extractable": Attribute.EXTRACTABLE,
                "encrypt": Attribute.ENCRYPT,
                "decrypt": Attribute.DECRYPT,
                "wrap": Attribute.WRAP,
                "unwrap": Attribute.UNWRAP,
                "sign": Attribute.SIGN,
                "derive": Attribute.DERIVE,
                "token": Attribute.TOKEN,
                "value_len": Attribute.VALUE_LEN,
            }.items()
        }

    assert _raw(hsm_store, attrs) == {
        "sensitive": True,
        "extractable": False,
        "encrypt": True,
        "decrypt": True,
        "wrap": False,
        "unwrap": False,
        "sign": False,
        "derive": False,
        "token": True,
        "value_len": 32,
    }
    other = f"{label}-b"
    hsm_store.generate_sealing_key(other, b"\x61")
    try:
        sealed = hsm_store.sealer(label).seal(b"v", b"a")
        with pytest.raises(KeyStoreError, match="does not authenticate"):
            hsm_store.sealer(other).open(sealed, b"a")
    finally:
        hsm_store.delete(other)


def test_sealer_missing_key_and_missing_gcm(
    hsm_store: Pkcs11KeyStore, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(KeyNotFound):
        hsm_store.sealer(label)
    monkeypatch.setattr(hsm_store.session, "_mechanisms", frozenset({Mechanism.ECDSA}))
    with pytest.raises(KeyStoreError, match="CKM_AES_GCM"):
        hsm_store.sealer(label)


def test_softhsm_offers_gcm_and_plain_ecdsa(hsm_store: Pkcs11KeyStore) -> None:
    assert Mechanism.AES_GCM in hsm_store.mechanisms
    assert Mechanism.ECDSA in hsm_store.mechanisms
    expected = (
        Mechanism.ECDSA_SHA256
        if Mechanism.ECDSA_SHA256 in hsm_store.mechanisms
        else Mechanism.ECDSA
    )
    assert hsm_store.sign_mechanism is expected


# --- construction, hygiene -------------------------------------------------------------------


def test_from_ref_with_pin_file_and_context_manager(softhsm_env: SoftHsmEnv, key: str) -> None:
    ref = parse_key_uri(
        f"pkcs11:token={softhsm_env.token_label};object={key}?pin-source=file:{softhsm_env.pin_file}"
    )
    with Pkcs11KeyStore.from_ref(ref) as store:
        assert store.get(key).label == key
        assert softhsm_env.pin not in repr(store)
    with pytest.raises(KeyStoreError, match="closed"):
        store.get(key)


def test_pin_never_in_repr_or_errors(hsm_store: Pkcs11KeyStore, softhsm_env: SoftHsmEnv) -> None:
    assert softhsm_env.pin not in repr(hsm_store)
    assert softhsm_env.pin not in repr(softhsm_env)
    assert softhsm_env.pin not in repr(hsm_store.session.lib)
    with pytest.raises(KeyNotFound) as info:
        hsm_store.get("absent-key")
    assert softhsm_env.pin not in str(info.value)


def test_sign_digest_matches_cka_ecdsa_over_sha256(hsm_store: Pkcs11KeyStore, key: str) -> None:
    """The signer hashes with SHA-256 itself when the token only has CKM_ECDSA."""
    did = hsm_store.get(key).did
    signer = Pkcs11Signer(hsm_store.session, key, did, Mechanism.ECDSA)
    assert signer.mechanism == "CKM_ECDSA"
    assert verify_es256_raw(did, b"message", signer.sign(b"message"))
