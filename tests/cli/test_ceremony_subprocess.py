"""End-to-end key ceremonies: the installed ``broker`` script in a subprocess, a fresh SoftHSM
token of its own (initialised here by softhsm/init-token.sh), SOFTHSM2_CONF passed explicitly.

Covers I01 (custody attributes of a generated key), I02 (did:key from the token's EC point equals
the did computed by ``cryptography``), the TSL entry, self-test, destroy, import from PEM / JWK /
hex, the error paths, and that no PIN or private key material reaches stdout, stderr or the
audit log.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.audit import verify_chain
from broker.keys.didkey import did_from_public_key, jwk_from_did

pytestmark = pytest.mark.softhsm

ROOT = Path(__file__).resolve().parents[2]
BROKER = ROOT / ".venv" / "bin" / "broker"


@dataclass
class Token:
    conf: Path
    label: str
    pin: str = field(repr=False)
    pin_file: Path
    audit: Path
    outputs: list[str] = field(default_factory=list)  # everything the CLI printed

    def uri(
        self, obj: str | None, *, token: str | None = None, pin_file: Path | None = None
    ) -> str:
        path = f"pkcs11:token={token or self.label}" + (f";object={obj}" if obj else "")
        return f"{path}?pin-source=file:{pin_file or self.pin_file}"

    def run(
        self,
        *argv: str,
        key: str | None = None,
        stdin: str = "",
        module: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "broker.cli"] if module else [str(BROKER)]
        cmd += ["keys", *argv, "--audit-log", str(self.audit)]
        if argv[0] != "audit-verify":
            cmd += ["--operator", "ceremony-test"]
        if key is not None:
            cmd += ["--key", key]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env["SOFTHSM2_CONF"] = str(self.conf)
        env.update(extra_env or {})
        proc = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, env=env, timeout=120, check=False
        )
        self.outputs += [proc.stdout, proc.stderr]
        return proc


@contextlib.contextmanager
def own_token(tmp_path_factory: pytest.TempPathFactory, label: str) -> Iterator[Token]:
    """A fresh SoftHSM token of its own, initialised by softhsm/init-token.sh with random PINs
    (files created 0600). On exit: nothing printed and nothing audited holds either PIN."""
    base = tmp_path_factory.mktemp(f"{label}-hsm")
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    pin_file, so_pin_file = base / "user.pin", base / "so.pin"
    for path, value in ((pin_file, pin), (so_pin_file, so_pin)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
    script = str(ROOT / "softhsm" / "init-token.sh")
    subprocess.run(
        [script, str(base / "hsm"), label, str(so_pin_file), str(pin_file)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    tok = Token(base / "hsm" / "softhsm2.conf", label, pin, pin_file, base / "audit.jsonl")
    yield tok
    for text in [*tok.outputs, tok.audit.read_text()]:
        assert pin not in text and so_pin not in text


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    with own_token(tmp_path_factory, "ceremony-e2e") as tok:
        yield tok


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    return proc.stderr


def test_i01_i02_full_ceremony(token: Token) -> None:
    label = "client-" + secrets.token_hex(3)
    key = token.uri(label).replace(f"object={label}", f"object={label};id=%01")

    gen = token.run("generate", "--json", key=key)
    assert gen.returncode == 0, gen.stderr
    did = json.loads(gen.stdout)["did"]
    assert did.startswith("did:key:zDn")

    show = token.run("show", "--json", key=key)
    assert show.returncode == 0, show.stderr
    doc = json.loads(show.stdout)
    assert doc["did"] == did and doc["kid"] == did and doc["id"] == "01"
    # I02: the did computed from the token's CKA_EC_POINT decodes to the same public key
    assert doc["public_jwk"] == jwk_from_did(did)
    # I01: generated in the token, never extractable, sign-only
    assert doc["custody"] == {
        "sensitive": True,
        "extractable": False,
        "never_extractable": True,
        "always_sensitive": True,
        "local": True,
        "sign_only": True,
    }
    assert doc["uri"].startswith(f"pkcs11:token=ceremony-e2e;object={label};id=%01;type=private")
    human = token.run("show", key=key)
    assert human.returncode == 0 and f"SHA256:{doc['fingerprint']}" in human.stdout

    tsl_run = token.run(
        "tsl-entry",
        "--issuer",
        "https://verifier.dome-marketplace.eu",
        "--url",
        "https://broker.example.org",
        "--redirect-uri",
        "https://broker.example.org/callback",
        "--post-logout-uri",
        "https://broker.example.org/",
        key=key,
    )
    assert tsl_run.returncode == 0, tsl_run.stderr
    entry = yaml.safe_load(tsl_run.stdout)[0]
    assert entry["clientId"] == did
    assert entry["jwkSetUrl"] == f"https://verifier.dome-marketplace.eu/oidc/did/{did}"
    assert entry["redirectUris"] == ["https://broker.example.org/callback"]
    assert entry["tokenEndpointAuthenticationSigningAlgorithm"] == "ES256"

    selftest = token.run("selftest", "--json", key=key, module=True)  # python -m broker.cli
    assert selftest.returncode == 0, selftest.stderr
    assert json.loads(selftest.stdout)["did"] == did
    assert json.loads(selftest.stdout)["mechanism"].startswith("CKM_ECDSA")

    other_did = did_from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    refused = token.run("destroy", key=key, stdin=other_did + "\n")
    assert refused.returncode == 1
    assert "[confirmation_mismatch]" in _one_line_error(refused)
    assert token.run("show", key=key).returncode == 0  # still there

    destroyed = token.run("destroy", key=key, stdin=did + "\n")
    assert destroyed.returncode == 0, destroyed.stderr
    gone = token.run("show", key=key)
    assert gone.returncode == 1 and "[key_not_found]" in _one_line_error(gone)

    records = [json.loads(line) for line in token.audit.read_text().splitlines()]
    mine = [r for r in records if r["key_uri"] and f"object={label};" in r["key_uri"]]
    assert [(r["action"], r["outcome"]) for r in mine] == [
        ("keys.generate.intent", "ok"),
        ("keys.generate", "ok"),
        ("keys.show", "ok"),
        ("keys.show", "ok"),
        ("keys.tsl_entry", "ok"),
        ("keys.selftest", "ok"),
        ("keys.destroy", "error"),
        ("keys.show", "ok"),
        ("keys.destroy", "ok"),
        ("keys.show", "error"),
    ]
    assert all(r["operator"] == "ceremony-test" for r in mine)
    assert mine[0]["did"] is None  # the intent is written before the key exists
    assert all(r["did"] == did for r in mine[1:-1])
    verify = token.run("audit-verify", "--log", str(token.audit), "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True
    assert verify_chain(token.audit).ok


def _key_files(key: ec.EllipticCurvePrivateKey) -> dict[str, tuple[str, list[str]]]:
    """Each import format: (file text, fragments of private material that must never leak)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    d_b64 = base64.urlsafe_b64encode(scalar).rstrip(b"=").decode()
    jwk = {**jwk_from_did(did_from_public_key(key.public_key())), "d": d_b64}
    jwk.pop("kid")
    pem_body = "".join(pem.splitlines()[1:-1])
    secrets_of_key = [pem_body[20:60], d_b64, scalar.hex(), scalar.hex().upper()]
    return {
        "pem": (pem, secrets_of_key),
        "jwk": (json.dumps(jwk), secrets_of_key),
        "hex": (scalar.hex() + "\n", secrets_of_key),
    }


@pytest.mark.parametrize("fmt", ["pem", "jwk", "hex"])
def test_import_gives_the_did_cryptography_computes(token: Token, tmp_path: Path, fmt: str) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    expected_did = did_from_public_key(private.public_key())
    text, leaks = _key_files(private)[fmt]
    key_file = tmp_path / f"key.{fmt}"
    key_file.write_text(text)
    label = f"imported-{fmt}-" + secrets.token_hex(3)

    proc = token.run("import", "--from", str(key_file), key=token.uri(label))
    assert proc.returncode == 0, proc.stderr
    assert "Destroy the plaintext key file securely" in proc.stdout
    assert expected_did in proc.stdout

    show = token.run("show", "--json", key=token.uri(label))
    doc = json.loads(show.stdout)
    assert doc["did"] == expected_did
    assert doc["custody"]["sensitive"] is True and doc["custody"]["extractable"] is False
    assert doc["custody"]["local"] is False  # imported, not generated in the token
    assert token.run("selftest", key=token.uri(label)).returncode == 0
    assert token.run("destroy", "--yes", key=token.uri(label)).returncode == 0

    for printed in [proc.stdout, proc.stderr, show.stdout, show.stderr, token.audit.read_text()]:
        for fragment in leaks:
            assert fragment not in printed


def test_import_of_a_bad_key_file_is_refused_without_echo(token: Token, tmp_path: Path) -> None:
    secret_like = secrets.token_hex(20)  # 20 bytes: not a P-256 scalar
    key_file = tmp_path / "bad.hex"
    key_file.write_text(secret_like)
    proc = token.run("import", "--from", str(key_file), key=token.uri("bad-" + secret_like[:4]))
    err = _one_line_error(proc)
    assert proc.returncode == 1 and "[invalid_key]" in err
    assert secret_like not in err and secret_like not in token.audit.read_text()
    missing = token.run("import", "--from", str(tmp_path / "absent.pem"), key=token.uri("x"))
    assert missing.returncode == 2 and "cannot read the key file" in _one_line_error(missing)


def test_wrong_pin(token: Token, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("99999999\n")
    wrong.chmod(0o600)
    proc = token.run("list", key=token.uri(None, pin_file=wrong))
    assert proc.returncode == 1
    err = _one_line_error(proc)
    assert "wrong PIN" in err and "[pin_incorrect]" in err and "99999999" not in err


def test_missing_key(token: Token) -> None:
    proc = token.run("selftest", key=token.uri("no-such-key"))
    assert proc.returncode == 1 and "[key_not_found]" in _one_line_error(proc)


def test_missing_token(token: Token) -> None:
    proc = token.run("list", key=token.uri(None, token="no-such-token"))
    assert proc.returncode == 1 and "[token_not_present]" in _one_line_error(proc)


def test_malformed_uri(token: Token) -> None:
    proc = token.run("show", key="pkcs11:token=ceremony-e2e;object=a;object=b")
    assert proc.returncode == 2
    assert "malformed key URI" in _one_line_error(proc)


def test_key_uri_from_environment_and_list(token: Token) -> None:
    label = "env-" + secrets.token_hex(3)
    gen = token.run("generate", extra_env={"BROKER_KEY_URI": token.uri(label)})
    assert gen.returncode == 0, gen.stderr
    listed = token.run("list", "--json", key=token.uri(None))
    assert label in [k["label"] for k in json.loads(listed.stdout)["keys"]]
    assert token.run("destroy", "--yes", key=token.uri(label)).returncode == 0


def test_generate_sealing_key(token: Token) -> None:
    label = "seal-" + secrets.token_hex(3)
    proc = token.run("generate-sealing-key", "--json", key=token.uri(label))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["type"] == "AES-256"
    again = token.run("generate-sealing-key", key=token.uri(label))
    assert again.returncode == 1 and "[key_exists]" in _one_line_error(again)


def test_tampered_audit_log_is_reported_by_the_script(token: Token, tmp_path: Path) -> None:
    log = tmp_path / "copy.jsonl"
    assert token.run("list", key=token.uri(None)).returncode == 0
    lines = token.audit.read_text().splitlines(keepends=True)
    assert len(lines) >= 2
    del lines[0]
    log.write_text("".join(lines))
    proc = token.run("audit-verify", "--log", str(log))
    assert proc.returncode == 1
    assert "audit chain broken at record 1" in proc.stderr and proc.stderr.count("\n") == 1
    assert "BROKEN" in proc.stdout


def test_destroy_asks_on_a_terminal(token: Token) -> None:
    import pty

    label = "tty-" + secrets.token_hex(3)
    gen = token.run("generate", "--json", key=token.uri(label))
    did = json.loads(gen.stdout)["did"]
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["SOFTHSM2_CONF"] = str(token.conf)
    proc = subprocess.Popen(
        [
            str(BROKER),
            "keys",
            "destroy",
            "--key",
            token.uri(label),
            "--audit-log",
            str(token.audit),
        ],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    os.close(slave)
    try:
        os.write(master, (did + "\n").encode())
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
    token.outputs += [out, err]
    assert proc.returncode == 0, err
    assert f"This destroys key '{label}' ({did})" in err and "Type its did to confirm" in err
    assert out.startswith(f"destroyed key '{label}'")
