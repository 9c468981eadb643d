"""deploy/token-init.sh against a real SoftHSM2 token in a temp dir: keys once, PINs from files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from broker.audit import verify_chain
from broker.keys.didkey import jwk_from_did
from devtools.pki import Ca

ROOT = Path(__file__).resolve().parents[2]
SO_PIN = "11223344"
USER_PIN = "55667788"


def run_token_init(tmp: Path) -> subprocess.CompletedProcess[str]:
    venv_bin = Path(sys.executable).parent
    env = {
        **{k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"},
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,
        "SECRETS_DIR": str(tmp / "secrets"),
        "BROKER_HOME": str(ROOT),
        "HSM_DIR": str(tmp / "hsm"),
        "AUDIT_LOG": str(tmp / "data" / "audit.jsonl"),
        "PEER_DIR": str(tmp / "peer"),
        "DEV_CLIENT_DIR": str(tmp / "dev-client"),
    }
    return subprocess.run(
        ["bash", str(ROOT / "deploy" / "token-init.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.mark.softhsm
def test_token_init_generates_keys_once_and_registers_the_client(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "secrets" / "broker_so_pin").write_text(SO_PIN + "\n")
    (tmp_path / "secrets" / "broker_user_pin").write_text(USER_PIN + "\n")
    for pin in ("broker_so_pin", "broker_user_pin"):
        (tmp_path / "secrets" / pin).chmod(0o600)  # group/other access is refused
    client_ca = Ca("dev-client-ca")
    (tmp_path / "secrets" / "grpc_client_ca").write_bytes(client_ca.pem)
    (tmp_path / "secrets" / "grpc_client_ca_key").write_bytes(
        client_ca.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    first = run_token_init(tmp_path)
    assert first.returncode == 0, first.stderr
    config = json.loads((tmp_path / "peer" / "peer-config.json").read_text())
    did = config["client"]["client_id"]
    assert did.startswith("did:key:zDn")
    expected = jwk_from_did(did)
    assert {k: config["client"]["jwk"][k] for k in ("kty", "crv", "x", "y")} == {
        k: expected[k] for k in ("kty", "crv", "x", "y")
    }
    assert config["client"]["redirect_uris"] == ["https://broker:8443/callback"]
    assert (tmp_path / "hsm" / "softhsm2.conf").is_file()

    dev_cert = x509.load_pem_x509_certificate((tmp_path / "dev-client" / "cert.pem").read_bytes())
    dev_cert.verify_directly_issued_by(client_ca.cert)
    san = dev_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/dev-client"
    ]
    assert (tmp_path / "dev-client" / "key.pem").stat().st_mode & 0o077 == 0

    second = run_token_init(tmp_path)  # idempotent: same key, no second sealing key
    assert second.returncode == 0, second.stderr
    again = json.loads((tmp_path / "peer" / "peer-config.json").read_text())
    assert again["client"]["client_id"] == did
    assert "sealing key" not in second.stdout
    assert "dev client certificate" not in second.stdout  # still valid: kept
    assert (tmp_path / "dev-client" / "cert.pem").read_bytes() == dev_cert.public_bytes(
        serialization.Encoding.PEM
    )

    for output in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert SO_PIN not in output and USER_PIN not in output
    audit = (tmp_path / "data" / "audit.jsonl").read_text()
    assert SO_PIN not in audit and USER_PIN not in audit
    assert '"keys.generate"' in audit and '"keys.generate_sealing_key"' in audit
    inits = [r for r in map(json.loads, audit.splitlines()) if r["action"] == "keys.init_token"]
    assert [(r["outcome"], r["key_uri"]) for r in inits] == [("ok", "pkcs11:token=broker")] * 2
    assert verify_chain(tmp_path / "data" / "audit.jsonl").ok


def test_token_init_refuses_to_run_without_pin_files(tmp_path: Path) -> None:
    result = run_token_init(tmp_path)
    assert result.returncode == 66
    assert "broker_so_pin is missing" in result.stderr


def _write_pins(secrets_dir: Path) -> tuple[Path, Path]:
    secrets_dir.mkdir()
    so_pin, user_pin = secrets_dir / "so.pin", secrets_dir / "user.pin"
    for path, value in ((so_pin, SO_PIN), (user_pin, USER_PIN)):
        path.write_text(value + "\n")
        path.chmod(0o600)
    return so_pin, user_pin


def _comparable(record: dict[str, object]) -> dict[str, object]:
    """A record without what differs between two runs (place in the chain, time, who, where)."""
    return {k: v for k, v in record.items() if k not in ("seq", "time", "prev", "hash")}


@pytest.mark.softhsm
def test_init_token_script_writes_the_audit_record_the_cli_writes(tmp_path: Path) -> None:
    """softhsm/init-token.sh with an audit log: one verifiable keys.init_token record per run,
    the same record ``broker keys init-token`` writes (token initialised, then already there)."""
    so_pin, user_pin = _write_pins(tmp_path / "secrets")
    audit = tmp_path / "audit.jsonl"
    script = [str(ROOT / "softhsm" / "init-token.sh"), str(tmp_path / "hsm"), "audited"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "SOFTHSM2_"))},
        "PYTHON": sys.executable,
    }

    def run(argv: list[str], **more: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            argv, env={**env, **more}, capture_output=True, text=True, check=False, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        assert SO_PIN not in proc.stdout + proc.stderr and USER_PIN not in proc.stdout + proc.stderr
        return proc

    first = run([*script, str(so_pin), str(user_pin), str(audit)])
    assert "token 'audited' initialised" in first.stdout
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["action"], r["outcome"], r["key_uri"]) for r in records] == [
        ("keys.init_token", "ok", "pkcs11:token=audited")
    ]
    assert verify_chain(audit).ok and verify_chain(audit).records == 1

    # Again, the log named by $BROKER_AUDIT_LOG this time: the token is left alone, and recorded.
    second = run([*script, str(so_pin), str(user_pin)], BROKER_AUDIT_LOG=str(audit))
    assert "already present, left alone" in second.stdout
    conf = tmp_path / "hsm" / "softhsm2.conf"
    by_hand = run(
        [
            str(Path(sys.executable).parent / "broker"),
            "keys",
            "init-token",
            "--token",
            "audited",
            "--so-pin-file",
            str(so_pin),
            "--pin-file",
            str(user_pin),
            "--audit-log",
            str(audit),
        ],
        SOFTHSM2_CONF=str(conf),
    )
    assert "already present, left alone" in by_hand.stdout
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(records) == 3 and verify_chain(audit).ok
    assert _comparable(records[1]) == _comparable(records[2])  # the script's == the CLI's
    assert records[1]["action"] == "keys.init_token" and records[1]["outcome"] == "ok"
    text = audit.read_text()
    assert SO_PIN not in text and USER_PIN not in text


@pytest.mark.softhsm
def test_init_token_script_without_an_audit_log_says_no_record_is_written(tmp_path: Path) -> None:
    so_pin, user_pin = _write_pins(tmp_path / "secrets")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "SOFTHSM2_"))}
    proc = subprocess.run(
        [
            str(ROOT / "softhsm" / "init-token.sh"),
            str(tmp_path / "hsm"),
            "plain",
            str(so_pin),
            str(user_pin),
        ],
        env={**env, "PYTHON": sys.executable},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "token 'plain' initialised" in proc.stdout
    assert "no audit record is written" in proc.stderr
    assert list(tmp_path.glob("*.jsonl")) == []  # no ./broker-audit.jsonl either
