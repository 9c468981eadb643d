"""softhsm/init-token.sh and ``python -m broker.keys.inittoken``: idempotent, PINs from files."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from broker.keys.inittoken import main, token_exists
from tests.conftest import ROOT, SoftHsmEnv

pytestmark = pytest.mark.softhsm


def test_fixture_token_was_made_by_the_script(softhsm_env: SoftHsmEnv) -> None:
    conf = softhsm_env.conf_path.read_text()
    assert f"directories.tokendir = {softhsm_env.tokens_dir}" in conf
    assert "/var/lib/softhsm" not in conf.replace("(/var/lib/softhsm)", "")
    assert token_exists(softhsm_env.module_path, softhsm_env.token_label)
    assert any(softhsm_env.tokens_dir.iterdir())


def test_main_is_idempotent_and_keeps_pins_out_of_output(
    softhsm_env: SoftHsmEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    label = f"it-{uuid.uuid4().hex[:8]}"
    args = [
        "--label",
        label,
        "--so-pin-file",
        str(softhsm_env.so_pin_file),
        "--user-pin-file",
        str(softhsm_env.pin_file),
    ]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "initialised" in out
    assert "already present" in out
    assert softhsm_env.pin not in out


def test_main_rejects_bad_pin_files(
    softhsm_env: SoftHsmEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short"
    short.write_text("123\n")
    short.chmod(0o600)  # a safe file: the length check is what this test is about
    label = f"bad-{uuid.uuid4().hex[:8]}"
    assert main(["--label", label, "--so-pin-file", str(short), "--user-pin-file", str(short)]) == 2
    assert "4 to 255 bytes" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert (
        main(["--label", label, "--so-pin-file", str(missing), "--user-pin-file", str(short)]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert not token_exists(softhsm_env.module_path, label)


def test_script_usage_and_missing_pin_file(tmp_path: Path) -> None:
    script = str(ROOT / "softhsm" / "init-token.sh")
    usage = subprocess.run([script], capture_output=True, text=True, check=False)
    assert usage.returncode == 64
    assert "usage" in usage.stderr
    missing = subprocess.run(
        [script, str(tmp_path / "hsm"), "x", str(tmp_path / "no"), str(tmp_path / "no")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 66
    assert "missing or unreadable" in missing.stderr
