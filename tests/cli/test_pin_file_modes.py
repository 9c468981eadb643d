"""PIN files open to group or others are refused by every command that reads them (issue 8,
section 8), as ssh refuses such key files; 0600 and 0400 are accepted. ``broker doctor`` is
covered in tests/doctor/test_doctor.py, the reader itself in tests/keys/test_uri.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from broker.cli import main
from tests.conftest import SoftHsmEnv
from tests.doctor.helpers import make_deployment

pytestmark = pytest.mark.softhsm

LOOSE = [0o644, 0o640, 0o604]


def _pin_copy(softhsm_env: SoftHsmEnv, directory: Path, mode: int) -> Path:
    path = directory / f"pin-{mode:o}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(softhsm_env.pin + "\n")  # the right PIN: only the mode is wrong
    path.chmod(mode)
    return path


def _keys_show(softhsm_env: SoftHsmEnv, pin_file: Path, audit: Path) -> int:
    uri = f"pkcs11:token={softhsm_env.token_label};object=no-such-key?pin-source=file:{pin_file}"
    return main(["keys", "show", "--key", uri, "--audit-log", str(audit)])


@pytest.mark.parametrize("mode", LOOSE)
def test_keys_show_refuses_a_pin_file_open_to_group_or_others(
    softhsm_env: SoftHsmEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    pin_file = _pin_copy(softhsm_env, tmp_path, mode)
    assert _keys_show(softhsm_env, pin_file, tmp_path / "audit.jsonl") == 1
    err = capsys.readouterr().err
    assert err == (
        f"broker keys show: insecure PIN file: PIN file {pin_file} has mode {mode:04o}; it must "
        "not be accessible by group or others (chmod 600) [insecure_pin_file]\n"
    )
    assert softhsm_env.pin not in err


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_keys_show_accepts_a_private_pin_file(
    softhsm_env: SoftHsmEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    pin_file = _pin_copy(softhsm_env, tmp_path, mode)
    assert _keys_show(softhsm_env, pin_file, tmp_path / "audit.jsonl") == 1
    assert "[key_not_found]" in capsys.readouterr().err  # logged in, then found no such key


@pytest.mark.parametrize("mode", LOOSE)
def test_serve_refuses_at_config_load_a_pin_file_open_to_group_or_others(
    softhsm_env: SoftHsmEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    pin_file = _pin_copy(softhsm_env, tmp_path, mode)
    deployment = make_deployment(
        tmp_path,
        now=time.time(),
        token_label=softhsm_env.token_label,
        key_label="client",
        sealing_label="sealing",
        pin_file=pin_file,
    )
    assert main(["serve", "--config", str(deployment.write())]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"PIN file {pin_file} has mode {mode:04o}" in err and "[insecure_pin_file]" in err
