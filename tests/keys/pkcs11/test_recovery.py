"""TEST-CATALOGUE D09: the CKR -> action table, and each action's behaviour when the error is
injected at login (C_OpenSession/C_Login), at C_FindObjects*, and at C_SignInit/C_Sign."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator
from typing import Any

import pkcs11.exceptions as p11e
import pytest

from broker.errors import (
    HsmUnavailable,
    InvalidKey,
    KeyNotFound,
    KeyStoreError,
    PinIncorrect,
    PinLocked,
    TokenNotPresent,
)
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.pkcs11.recovery import RECOVERABLE, Action, rule_for, table, to_broker_error

ALL_PKCS11_ERRORS = sorted(
    (
        klass
        for _, klass in inspect.getmembers(p11e, inspect.isclass)
        if issubclass(klass, p11e.PKCS11Error)
    ),
    key=lambda k: k.__name__,
)

# The reviewed expectations, restated independently of the implementation's table.
EXPECTED: dict[type[p11e.PKCS11Error], tuple[Action, type[KeyStoreError]]] = {
    p11e.SessionHandleInvalid: (Action.NEW_SESSION, HsmUnavailable),
    p11e.SessionClosed: (Action.NEW_SESSION, HsmUnavailable),
    p11e.OperationActive: (Action.NEW_SESSION, HsmUnavailable),
    p11e.ObjectHandleInvalid: (Action.NEW_SESSION, HsmUnavailable),
    p11e.KeyHandleInvalid: (Action.NEW_SESSION, HsmUnavailable),
    p11e.UserNotLoggedIn: (Action.RELOGIN, HsmUnavailable),
    p11e.DeviceError: (Action.REINIT, HsmUnavailable),
    p11e.GeneralError: (Action.REINIT, HsmUnavailable),
    p11e.FunctionFailed: (Action.REINIT, HsmUnavailable),
    p11e.PKCS11Error: (Action.REINIT, HsmUnavailable),  # e.g. CKR_CRYPTOKI_NOT_INITIALIZED
    p11e.TokenNotPresent: (Action.TOKEN_GONE, TokenNotPresent),
    p11e.DeviceRemoved: (Action.TOKEN_GONE, TokenNotPresent),
    p11e.SlotIDInvalid: (Action.TOKEN_GONE, TokenNotPresent),
    p11e.NoSuchToken: (Action.TOKEN_GONE, TokenNotPresent),
    p11e.PinIncorrect: (Action.PERMANENT, PinIncorrect),
    p11e.PinLocked: (Action.PERMANENT, PinLocked),
    p11e.PinExpired: (Action.PERMANENT, PinLocked),
    p11e.SessionCount: (Action.BUSY, HsmUnavailable),
    p11e.DeviceMemory: (Action.BUSY, HsmUnavailable),
    p11e.NoSuchKey: (Action.PERMANENT, KeyNotFound),
    p11e.KeyTypeInconsistent: (Action.PERMANENT, InvalidKey),
    p11e.AttributeSensitive: (Action.PERMANENT, KeyStoreError),
    p11e.KeyUnextractable: (Action.PERMANENT, KeyStoreError),
    p11e.MechanismInvalid: (Action.PERMANENT, KeyStoreError),
}


@pytest.mark.parametrize("klass", ALL_PKCS11_ERRORS, ids=lambda k: k.__name__)
def test_d09_every_pkcs11_error_maps_to_exactly_one_action(klass: type[p11e.PKCS11Error]) -> None:
    rule = rule_for(klass())
    assert isinstance(rule.action, Action)
    assert issubclass(rule.error, KeyStoreError)
    error = to_broker_error(klass(), "sign")
    assert isinstance(error, rule.error)
    assert "PKCS#11 sign failed" in str(error)
    # Only a few, reviewed classes are allowed to fall through to the default rule.
    if klass not in table() and klass is not p11e.PKCS11Error:
        assert rule.action is Action.REINIT


@pytest.mark.parametrize(
    ("klass", "expected"), list(EXPECTED.items()), ids=lambda v: getattr(v, "__name__", "")
)
def test_d09_reviewed_rows(
    klass: type[p11e.PKCS11Error], expected: tuple[Action, type[KeyStoreError]]
) -> None:
    rule = rule_for(klass())
    assert (rule.action, rule.error) == expected


def test_d09_pin_errors_are_never_retryable_and_hsm_errors_are() -> None:
    permanent: list[type[p11e.PKCS11Error]] = [p11e.PinIncorrect, p11e.PinLocked, p11e.PinExpired]
    transient: list[type[p11e.PKCS11Error]] = [
        p11e.SessionHandleInvalid,
        p11e.DeviceError,
        p11e.TokenNotPresent,
    ]
    for klass in permanent:
        assert not to_broker_error(klass(), "login").retryable
    for klass in transient:
        assert to_broker_error(klass(), "sign").retryable


# --- behaviour per action, with the error injected at each stage -----------------------------

INJECTED = [
    p11e.SessionHandleInvalid,
    p11e.OperationActive,
    p11e.UserNotLoggedIn,
    p11e.DeviceError,
    p11e.GeneralError,
    p11e.TokenNotPresent,
    p11e.PinIncorrect,
    p11e.PinLocked,
    p11e.SessionCount,
    p11e.MechanismInvalid,
    p11e.KeyTypeInconsistent,
]


@pytest.fixture
def signing_key(hsm_store: Pkcs11KeyStore) -> Iterator[str]:
    label = f"d09-{uuid.uuid4().hex[:10]}"
    hsm_store.generate(label, b"\xd9")
    yield label
    hsm_store.delete(label)


def _expect(store: Pkcs11KeyStore, klass: type[p11e.PKCS11Error], action: Any, before: int) -> None:
    rule = rule_for(klass())
    if rule.action in RECOVERABLE:
        assert action() is not None
        assert store.session.recoveries == before + 1
    else:
        with pytest.raises(rule.error):
            action()
        assert store.session.recoveries == before


@pytest.mark.softhsm
@pytest.mark.parametrize("klass", INJECTED, ids=lambda k: k.__name__)
def test_d09_injected_at_sign(
    hsm_store: Pkcs11KeyStore,
    signing_key: str,
    klass: type[p11e.PKCS11Error],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signer = hsm_store.signer(signing_key)
    real = hsm_store.session.private_ec
    state = {"failed": False}

    class Failing:
        def sign(self, *_: object, **__: object) -> bytes:
            state["failed"] = True
            raise klass()

    def private_ec(session: Any, label: str) -> Any:
        return real(session, label) if state["failed"] else Failing()

    monkeypatch.setattr(hsm_store.session, "private_ec", private_ec)
    _expect(hsm_store, klass, lambda: signer.sign(b"d09"), hsm_store.session.recoveries)
    assert state["failed"]


@pytest.mark.softhsm
@pytest.mark.parametrize("klass", INJECTED, ids=lambda k: k.__name__)
def test_d09_injected_at_find(
    hsm_store: Pkcs11KeyStore,
    signing_key: str,
    klass: type[p11e.PKCS11Error],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = hsm_store.session.find
    state = {"failed": False}

    def find(session: Any, object_class: Any, label: str) -> Any:
        if not state["failed"]:
            state["failed"] = True
            raise klass()
        return real(session, object_class, label)

    monkeypatch.setattr(hsm_store.session, "find", find)
    _expect(hsm_store, klass, lambda: hsm_store.get(signing_key), hsm_store.session.recoveries)


@pytest.mark.softhsm
@pytest.mark.parametrize("klass", INJECTED, ids=lambda k: k.__name__)
def test_d09_injected_at_login_during_recovery(
    hsm_store: Pkcs11KeyStore,
    signing_key: str,
    klass: type[p11e.PKCS11Error],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lost session triggers recovery; the re-login then fails: no second recovery."""
    signer = hsm_store.signer(signing_key)
    real = hsm_store.session.login
    calls: list[object] = []

    def login(token: Any) -> Any:
        calls.append(token)
        raise klass()

    monkeypatch.setattr(hsm_store.session, "login", login)
    hsm_store.session.current.close()
    rule = rule_for(klass())
    expected: type[KeyStoreError] = rule.error
    with pytest.raises(expected) as info:
        signer.sign(b"d09")
    assert len(calls) == 1  # never a login loop (D05: lock-out risk)
    if rule.action in RECOVERABLE or rule.action is Action.BUSY:
        assert info.value.retryable
    monkeypatch.setattr(hsm_store.session, "login", real)
    assert len(signer.sign(b"back")) == 64
