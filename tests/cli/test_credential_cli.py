"""``broker keys credential import|show|remove``: in-process over the soft backend with a fake
clock, and once as a subprocess against a real SoftHSM token."""

from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.audit import verify_chain
from broker.cli import main
from broker.cli.keys import register as register_keys
from broker.credentials.lear import parse_credential
from broker.keys.didkey import did_from_public_key
from tests.cli.soft_backend import SoftBackend
from tests.clock import FakeClock
from tests.conftest import SoftHsmEnv
from tests.credentials.issuer import TestCa, TestIssuer

PIN = "4711-secret-pin"
ROOT = Path(__file__).resolve().parents[2]


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp_path
        self.capsys = capsys
        self.clock = FakeClock()
        self.audit = tmp_path / "audit.jsonl"
        self.pin_file = tmp_path / "pin"
        self.pin_file.write_text(PIN + "\n")
        self.pin_file.chmod(0o600)
        backend = SoftBackend(token="ceremony", pin=PIN)
        self.groups = [
            functools.partial(register_keys, backend_factory=lambda: backend, clock=self.clock)
        ]
        self.key = f"pkcs11:token=ceremony;object=m2m?pin-source=file:{self.pin_file}"
        self.issuer = TestIssuer.self_signed()

    @property
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC)

    def run(self, *argv: str, key: bool = True) -> tuple[int, str, str]:
        args = ["keys", *argv, "--audit-log", str(self.audit), "--operator", "alice"]
        if key:
            args += ["--key", self.key]
        code = main(args, groups=self.groups)
        out, err = self.capsys.readouterr()
        return code, out, err

    def generate(self) -> str:
        code, out, _ = self.run("generate", "--json")
        assert code == 0
        did = json.loads(out)["did"]
        assert isinstance(did, str)
        return did

    def write(self, jwt: str, name: str = "vc.jwt") -> str:
        path = self.tmp / name
        path.write_text(jwt + "\n")
        return str(path)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, capsys)


def test_import_then_show_then_remove(cli: Cli) -> None:
    did = cli.generate()
    jwt = cli.issuer.issue(did, now=cli.now, valid_for=timedelta(days=200, hours=1))
    code, out, err = cli.run("credential", "import", "--file", cli.write(jwt))
    assert (code, err) == (0, "")
    assert "imported" in out and did in out and "200 days left" in out
    stored = cli.tmp / "lear-credential-machine.jwt"
    assert stored.read_text() == jwt + "\n"
    assert stored.stat().st_mode & 0o777 == 0o644

    code, out, _ = cli.run("credential", "show", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["status"] == "ok"
    assert doc["mandator"]["organization"] == "Example Org SL"
    assert doc["mandatee"]["id"] == did
    assert doc["issuer"] == cli.issuer.did
    assert doc["certificate"]["organizationIdentifier"] == cli.issuer.org_id
    assert doc["daysLeft"] == 200
    assert doc["powers"][0]["function"] == "Onboarding"
    code, text, _ = cli.run("credential", "show")
    assert "Example Org SL (VATES-A11111111)" in text and "Onboarding @ DOME" in text

    code, out, _ = cli.run("credential", "remove", key=False)
    assert code == 0 and not stored.exists()
    code, _, err = cli.run("credential", "show")
    assert code != 0 and "[missing]" in err, err


def test_audit_records_carry_the_credential_hash_and_id(cli: Cli) -> None:
    did = cli.generate()
    first = cli.issuer.issue(did, now=cli.now)
    second = cli.issuer.issue(did, now=cli.now, valid_for=timedelta(days=400))
    assert cli.run("credential", "import", "--file", cli.write(first))[0] == 0
    code, _, err = cli.run("credential", "import", "--file", cli.write(second, "b.jwt"))
    assert code != 0 and "--replace" in err
    assert (
        cli.run("credential", "import", "--replace", "--file", cli.write(second, "b.jwt"))[0] == 0
    )
    assert cli.run("credential", "remove", key=False)[0] == 0

    a, b = parse_credential(first), parse_credential(second)
    rows = [
        (r["action"], r["outcome"], r.get("credential_sha256"), r.get("credential_id"))
        for r in cli.records()
        if r["action"].startswith("keys.credential")
    ]
    assert rows == [
        ("keys.credential.import", "ok", a.sha256, a.credential_id),
        ("keys.credential.import", "error", b.sha256, b.credential_id),
        ("keys.credential.replace", "ok", b.sha256, b.credential_id),
        ("keys.credential.remove", "ok", b.sha256, b.credential_id),
    ]
    imported = next(r for r in cli.records() if r["action"] == "keys.credential.import")
    assert imported["did"] == did and imported["key_uri"].startswith("pkcs11:token=ceremony")
    assert verify_chain(cli.audit).ok


def test_import_bound_to_another_did_is_refused_naming_both(cli: Cli) -> None:
    did = cli.generate()
    other = did_from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    code, _, err = cli.run(
        "credential", "import", "--file", cli.write(cli.issuer.issue(other, now=cli.now))
    )
    assert code != 0
    assert did in err and other in err and "not_bound" in err
    assert not (cli.tmp / "lear-credential-machine.jwt").exists()
    assert cli.records()[-1]["error"] == "not_bound"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "expired"),
        ("future", "not_yet_valid"),
        ("other-org", "issuer_mismatch"),
        ("employee", "not_lear_machine"),
    ],
)
def test_import_refuses(cli: Cli, case: str, reason: str) -> None:
    did = cli.generate()
    issuer = cli.issuer
    options: dict[str, Any] = {}
    now = cli.now
    if case == "expired":
        now = cli.now - timedelta(days=400)
    elif case == "future":
        options["valid_from"] = cli.now + timedelta(days=1)
    elif case == "other-org":
        issuer = TestIssuer.self_signed(cert_org_id="VATES-Z99999999")
    else:
        options["types"] = ["VerifiableCredential", "LEARCredentialEmployee"]
    jwt = issuer.issue(did, now=now, **options)
    code, _, err = cli.run("credential", "import", "--file", cli.write(jwt))
    assert code != 0 and reason in err
    assert not (cli.tmp / "lear-credential-machine.jwt").exists()


def test_import_with_a_ca_bundle(cli: Cli) -> None:
    did = cli.generate()
    ca, stranger = TestCa.make(), TestCa.make("Another Root CA", key_index=11)
    jwt = TestIssuer.from_ca(ca).issue(did, now=cli.now)
    (cli.tmp / "other.pem").write_bytes(stranger.pem())
    (cli.tmp / "ca.pem").write_bytes(ca.pem())
    path = cli.write(jwt)
    code, _, err = cli.run(
        "credential", "import", "--file", path, "--ca-bundle", str(cli.tmp / "other.pem")
    )
    assert code != 0 and "untrusted_chain" in err
    code, _, err = cli.run(
        "credential", "import", "--file", path, "--ca-bundle", str(cli.tmp / "ca.pem")
    )
    assert (code, err) == (0, "")


def test_credential_path_option_and_show_without_key(cli: Cli) -> None:
    did = cli.generate()
    where = cli.tmp / "elsewhere.jwt"
    jwt = cli.issuer.issue(did, now=cli.now)
    code, _, _ = cli.run(
        "credential", "import", "--file", cli.write(jwt), "--credential", str(where)
    )
    assert code == 0 and where.exists()
    code, out, _ = cli.run("credential", "show", "--json", "--credential", str(where), key=False)
    assert code == 0
    assert json.loads(out)["status"].startswith("ok (binding not checked")


@pytest.mark.softhsm
def test_import_and_show_against_softhsm_in_a_subprocess(
    softhsm_env: SoftHsmEnv, tmp_path: Path
) -> None:
    label = "m2m-" + secrets.token_hex(4)
    key = (
        f"pkcs11:token={softhsm_env.token_label};object={label}"
        f"?module-path={softhsm_env.module_path}&pin-source=file:{softhsm_env.pin_file}"
    )
    audit = tmp_path / "audit.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["SOFTHSM2_CONF"] = str(softhsm_env.conf_path)

    def broker(*argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "broker.cli", "keys", *argv, "--key", key]
        cmd += ["--audit-log", str(audit), "--operator", "credential-test"]
        return subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=120, check=False
        )

    gen = broker("generate", "--json")
    assert gen.returncode == 0, gen.stderr
    did = json.loads(gen.stdout)["did"]
    try:
        vc = tmp_path / "vc.jwt"
        vc.write_text(TestIssuer.self_signed().issue(did, now=datetime.now(UTC)))
        imp = broker("credential", "import", "--file", str(vc))
        assert imp.returncode == 0, imp.stderr
        show = broker("credential", "show", "--json")
        assert show.returncode == 0, show.stderr
        doc = json.loads(show.stdout)
        assert doc["status"] == "ok" and doc["subject"] == did
        assert doc["daysLeft"] in (364, 365)
        assert verify_chain(audit).ok
    finally:
        broker("destroy", "--yes")


def test_an_edited_credential_hash_breaks_the_audit_chain(cli: Cli) -> None:
    did = cli.generate()
    jwt = cli.issuer.issue(did, now=cli.now)
    assert cli.run("credential", "import", "--file", cli.write(jwt))[0] == 0
    sha = parse_credential(jwt).sha256
    text = cli.audit.read_text()
    assert text.count(sha) == 1
    cli.audit.write_text(text.replace(sha, "0" * 64))
    result = verify_chain(cli.audit)
    assert not result.ok and result.first_bad_seq == 3  # generate.intent, generate, import
