"""Half-made signing keys on a real SoftHSM2 token (threat model section 7).

An import creates the public and the private object with two ``C_CreateObject`` calls; a
process killed between them leaves one object alone. The store names such keys
(``list_half_keys``), ``list`` skips them instead of failing, a failed second create leaves
nothing, and a retry after a lost session removes the half its first attempt left.
"""

from __future__ import annotations

import contextlib
import ctypes
import uuid
from collections.abc import Iterator
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, ObjectClass

from broker.errors import KeyNotFound, KeyStoreError
from broker.keys.api import HalfKey
from broker.keys.pkcs11.store import Pkcs11KeyStore
from tests.keys.halves import create_half

pytestmark = pytest.mark.softhsm


@pytest.fixture
def label(hsm_store: Pkcs11KeyStore) -> Iterator[str]:
    name = f"half-{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(KeyNotFound):
        hsm_store.delete(name)


def _objects(store: Pkcs11KeyStore, label: str) -> list[str]:
    """The classes of the objects labelled ``label`` in the token."""

    def fn(session: Any) -> list[str]:
        found = session.get_objects({Attribute.LABEL: label})
        return sorted(ObjectClass(obj[Attribute.CLASS]).name for obj in found)

    return store.session.run("test objects", fn)


@pytest.mark.parametrize("present", ["public", "private"])
def test_a_lone_object_is_listed_as_half_made_and_list_skips_it(
    hsm_store: Pkcs11KeyStore, label: str, present: str
) -> None:
    whole = f"{label}-whole"
    hsm_store.generate(whole, b"\x01")
    try:
        hsm_store.session.run(
            "test", lambda session: create_half(session, label, b"\xa1\xb2", present)
        )
        halves = [h for h in hsm_store.list_half_keys() if h.label.startswith(label)]
        assert halves == [HalfKey(label, b"\xa1\xb2", present)]
        assert halves[0].missing == ("private" if present == "public" else "public")
        listed = {i.label for i in hsm_store.list()}  # a lone private object made list() fail
        assert whole in listed and label not in listed
        hsm_store.delete(label)  # destroy removes the lone object
        assert _objects(hsm_store, label) == []
        assert [h for h in hsm_store.list_half_keys() if h.label == label] == []
    finally:
        hsm_store.delete(whole)


class _FailingPrivateCreate:
    """The store's session, except that creating a private object fails as ``fail`` says."""

    def __init__(self, real: Any, fail: Any) -> None:
        self._real = real
        self._fail = fail
        self.private_creates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def create_object(self, template: dict[Attribute, Any]) -> Any:
        if template.get(Attribute.CLASS) == ObjectClass.PRIVATE_KEY:
            self.private_creates += 1
            self._fail(self._real)
        return self._real.create_object(template)


def _install(
    store: Pkcs11KeyStore, monkeypatch: pytest.MonkeyPatch, fail: Any
) -> _FailingPrivateCreate:
    store.list()  # a live session to wrap
    proxy = _FailingPrivateCreate(store.session.current, fail)
    monkeypatch.setattr(store.session, "_session", proxy)
    return proxy


def test_a_failed_private_create_leaves_no_public_object(
    hsm_store: Pkcs11KeyStore, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(_real: Any) -> None:
        raise p11e.TemplateInconsistent()

    proxy = _install(hsm_store, monkeypatch, refuse)
    with pytest.raises(KeyStoreError, match="template inconsistent"):
        hsm_store.import_key(label, b"\x07", ec.generate_private_key(ec.SECP256R1()))
    assert proxy.private_creates == 1
    monkeypatch.undo()
    assert _objects(hsm_store, label) == []  # the public object was rolled back
    assert [h for h in hsm_store.list_half_keys() if h.label == label] == []


def test_a_retry_after_a_lost_session_removes_its_own_half_and_imports(
    hsm_store: Pkcs11KeyStore, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session dies between the two creates: the rollback fails too, the store recovers
    and runs the import again, which must not trip over the public object left behind."""
    lib = ctypes.CDLL(hsm_store.module_path)

    def lose_session(real: Any) -> None:
        assert lib.C_CloseSession(ctypes.c_ulong(real.handle)) == 0

    proxy = _install(hsm_store, monkeypatch, lose_session)
    before = hsm_store.session.recoveries
    private_key = ec.generate_private_key(ec.SECP256R1())
    info = hsm_store.import_key(label, b"\x08", private_key)
    assert proxy.private_creates == 1  # the retry ran on the recovered (real) session
    assert hsm_store.session.recoveries == before + 1
    assert info.public_key.public_numbers() == private_key.public_key().public_numbers()
    assert _objects(hsm_store, label) == ["PRIVATE_KEY", "PUBLIC_KEY"]
    assert [h for h in hsm_store.list_half_keys() if h.label == label] == []
