"""``broker keys init-token``: a SoftHSM token from nothing (configuration written, PINs from
files), idempotent, audited, and usable by the next ceremony. Real processes: SoftHSM reads
SOFTHSM2_CONF once per process."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from broker.audit import verify_chain
from tests.conftest import ROOT

pytestmark = pytest.mark.softhsm


def _secret(path: Path, mode: int = 0o600) -> str:
    value = secrets.token_hex(8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    path.chmod(mode)
    return value


def _broker(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "BROKER_KEY_URI")}
    environ.update(env)
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *argv],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_init_token_from_nothing_then_generate(tmp_path: Path) -> None:
    so_pin, pin = _secret(tmp_path / "so.pin"), _secret(tmp_path / "user.pin")
    conf = tmp_path / "hsm" / "softhsm2.conf"
    audit = tmp_path / "audit.jsonl"
    argv = [
        "keys",
        "init-token",
        "--token",
        "broker",
        "--so-pin-file",
        str(tmp_path / "so.pin"),
        "--pin-file",
        str(tmp_path / "user.pin"),
        "--softhsm-conf",
        str(conf),
        "--audit-log",
        str(audit),
        "--operator",
        "alice",
    ]
    first = _broker(argv, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0].startswith("token 'broker' initialised (")
    assert f"export SOFTHSM2_CONF={conf}" in first.stdout
    assert f"directories.tokendir = {conf.parent / 'tokens'}" in conf.read_text()
    for path in (conf.parent, conf.parent / "tokens"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    again = _broker([*argv, "--json"], tmp_path)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["initialised"] is False and doc["softhsm_conf_written"] is False

    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["action"], r["outcome"], r["key_uri"]) for r in records] == [
        ("keys.init_token", "ok", "pkcs11:token=broker")
    ] * 2
    assert verify_chain(str(audit)).ok
    for text in (first.stdout, first.stderr, again.stdout, audit.read_text()):
        assert so_pin not in text and pin not in text

    key = f"pkcs11:token=broker;object=client;id=%01?pin-source=file:{tmp_path / 'user.pin'}"
    gen = _broker(
        ["keys", "generate", "--key", key, "--audit-log", str(audit), "--json"],
        tmp_path,
        SOFTHSM2_CONF=str(conf),
    )
    assert gen.returncode == 0, gen.stderr
    assert json.loads(gen.stdout)["did"].startswith("did:key:zDn")


def test_init_token_refuses_a_pin_on_argv_and_an_insecure_pin_file(tmp_path: Path) -> None:
    _secret(tmp_path / "so.pin")
    _secret(tmp_path / "user.pin", mode=0o644)
    base = ["keys", "init-token", "--token", "t", "--pin-file", str(tmp_path / "user.pin")]
    on_argv = _broker([*base, "--so-pin", "87654321"], tmp_path)
    assert on_argv.returncode == 2 and "87654321" not in on_argv.stderr
    assert "never goes on the command line" in on_argv.stderr

    audit = tmp_path / "audit.jsonl"
    insecure = _broker(
        [
            *base,
            "--so-pin-file",
            str(tmp_path / "so.pin"),
            "--softhsm-conf",
            str(tmp_path / "hsm" / "softhsm2.conf"),
            "--audit-log",
            str(audit),
            "--json",
        ],
        tmp_path,
    )
    assert insecure.returncode == 1, insecure.stderr
    assert "[insecure_pin_file]" in insecure.stderr
    assert json.loads(insecure.stdout)["error"]["reason"] == "insecure_pin_file"
    (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert (record["action"], record["outcome"], record["error"]) == (
        "keys.init_token",
        "error",
        "insecure_pin_file",
    )
