"""``broker doctor`` names a half-made signing key in the token (threat model section 7).

A key of which only the public or only the private object is in the token (an import killed
between its two creates) cannot sign and blocks a new key of its label: ``hsm.half_keys`` warns,
naming it and the ``broker keys destroy`` command that removes it.
"""

from __future__ import annotations

import secrets

import pytest

from broker.doctor.result import exit_code, to_text
from broker.errors import KeyNotFound
from broker.keys.pkcs11 import Pkcs11KeyStore
from tests.clock import FakeClock
from tests.conftest import SoftHsmEnv
from tests.doctor.helpers import Deployment, FakeVerifier
from tests.doctor.test_doctor import FAIL, OK, WARN, doctor
from tests.keys.halves import create_half

pytestmark = pytest.mark.softhsm


@pytest.mark.parametrize("present", ["public", "private"])
async def test_a_half_made_key_is_named_with_its_destroy_command(
    deployment: Deployment,
    verifier: FakeVerifier,
    clock: FakeClock,
    *,
    hsm_store: Pkcs11KeyStore,
    softhsm_env: SoftHsmEnv,
    present: str,
) -> None:
    label = f"doctor-half-{secrets.token_hex(4)}"
    hsm_store.session.run("test", lambda s: create_half(s, label, b"\xc3\x01", present))
    try:
        found = await doctor(deployment, verifier, clock)
    finally:
        hsm_store.delete(label)
    check = found["hsm.half_keys"]
    assert check.status is WARN, check.detail
    missing = "private" if present == "public" else "public"
    assert f"key {label!r} (id c301)" in check.detail
    assert f"only its {present} key object is in the token" in check.detail
    assert f"its {missing} key object is missing" in check.detail
    destroy = f"broker keys destroy --key pkcs11:token={softhsm_env.token_label};object={label}"
    assert destroy in check.detail and "run the ceremony" in check.detail
    assert found["hsm.client_key"].status is OK  # another label: the client key still works
    assert not [r for r in found.values() if r.status is FAIL], to_text(list(found.values()))
    assert exit_code(list(found.values())) == 0  # a warning: serve still works
    assert label in to_text(list(found.values()))

    again = await doctor(deployment, verifier, clock)  # destroyed: nothing to say
    assert again["hsm.half_keys"].status is OK
    with pytest.raises(KeyNotFound):
        hsm_store.delete(label)
