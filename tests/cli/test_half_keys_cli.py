"""A half-made signing key is an orphan the keys commands name (threat model section 7).

An import creates the public and the private object with two ``C_CreateObject`` calls; killed
between them, it leaves one object alone. The lone object is made here with python-pkcs11 in a
subprocess (``tests.keys.halves``) on this module's own SoftHSM token; the installed ``broker``
script must then name it (``list`` warns, creating commands refuse) with the way out (destroy,
then run the ceremony again: adopt is refused), and after ``destroy`` the ceremony succeeds.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.keys.didkey import did_from_public_key
from tests.cli.test_ceremony_subprocess import ROOT, Token, own_token

pytestmark = pytest.mark.softhsm


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    with own_token(tmp_path_factory, "half") as tok:
        yield tok


def make_half(token: Token, label: str, key_id: str, present: str) -> None:
    """Only the ``present`` object of a new P-256 key, made with python-pkcs11 directly."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.keys.halves",
            token.label,
            str(token.pin_file),
            label,
            key_id,
            present,
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "SOFTHSM2_CONF": str(token.conf)},
        timeout=120,
    )


def orphans(token: Token) -> list[dict[str, object]]:
    listed = token.run("list", "--json", key=token.uri(None))
    assert listed.returncode == 0, listed.stderr
    found: list[dict[str, object]] = json.loads(listed.stdout)["orphans"]
    return found


def key_file(tmp_path: Path) -> tuple[Path, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem, did_from_public_key(private.public_key())


def chain_ok(token: Token) -> None:
    verify = token.run("audit-verify", "--log", str(token.audit), "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True, verify.stdout


def test_a_lone_public_object_is_named_and_destroyed_then_the_import_runs(
    token: Token, tmp_path: Path
) -> None:
    label = f"imp-{secrets.token_hex(3)}"
    key = token.uri(label).replace(f"object={label}", f"object={label};id=%A1")
    make_half(token, label, "a1", "public")

    listed = token.run("list", "--json", key=token.uri(None))
    assert listed.returncode == 0, listed.stderr
    [orphan] = json.loads(listed.stdout)["orphans"]
    assert orphan["label"] == label and orphan["id"] == "a1" and orphan["half"] == "public"
    assert "its private key object is missing" in str(orphan["why"])
    assert f"half-made key {label!r} (id a1)" in listed.stderr
    assert f"broker keys destroy --key pkcs11:token=half;object={label};id=%a1'" in (
        listed.stderr.replace("%A1", "%a1")
    )

    pem, did = key_file(tmp_path)
    again = token.run("import", "--from", str(pem), key=key)  # before: "already exists"
    assert again.returncode != 0
    assert "[orphan_key]" in again.stderr
    assert f"half-made key {label!r}" in again.stderr
    assert "only its public key object is in the token" in again.stderr
    assert "cannot be adopted" in again.stderr and "broker keys adopt" not in again.stderr
    assert "then run the ceremony that made it again" in again.stderr

    adopt = token.run("adopt", "--yes", key=key)
    assert adopt.returncode != 0 and "cannot be adopted" in adopt.stderr, adopt.stderr

    wrong = token.run("destroy", key=key, stdin="b2\n")  # the id must be typed
    assert wrong.returncode != 0 and "nothing was destroyed" in wrong.stderr
    destroyed = token.run("destroy", key=key, stdin="a1\n")
    assert destroyed.returncode == 0, destroyed.stderr
    assert f"destroyed half-made key {label!r} (id a1, only its public object)" in (
        destroyed.stdout
    )
    assert orphans(token) == []

    imported = token.run("import", "--from", str(pem), key=key)
    assert imported.returncode == 0, imported.stderr
    assert did in imported.stdout
    assert orphans(token) == []
    chain_ok(token)


def test_a_lone_private_object_no_longer_breaks_list_and_blocks_generate(token: Token) -> None:
    label = f"gen-{secrets.token_hex(3)}"
    key = token.uri(label)
    make_half(token, label, "b7", "private")

    found = orphans(token)  # before: list failed ("has no public half") and named nothing
    assert [(o["label"], o["half"]) for o in found] == [(label, "private")]

    refused = token.run("generate", key=key)
    assert refused.returncode != 0 and "[orphan_key]" in refused.stderr
    assert "only its private key object is in the token" in refused.stderr

    assert token.run("destroy", "--yes", key=key).returncode == 0
    generated = token.run("generate", key=key)
    assert generated.returncode == 0, generated.stderr
    assert orphans(token) == []
    chain_ok(token)
