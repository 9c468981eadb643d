"""``broker serve`` and ``broker doctor`` exit with the same status for the same failure (2:
usage or configuration, 1: operational), and the one-line errors carry SoftHSM hints (the
SOFTHSM2_CONF mistakes, the token labels that do exist). Real processes, a real SoftHSM token."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.keys.pkcs11.hints import softhsm_conf_hint
from tests.conftest import ROOT, SoftHsmEnv
from tests.doctor.helpers import make_deployment

pytestmark = pytest.mark.softhsm


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    stderr_has: str  # in serve's line, and in doctor's line or report


def _write_deployment(root: Path, env: SoftHsmEnv, *, token: str) -> Path:
    dep = make_deployment(
        root,
        now=time.time(),
        token_label=token,
        key_label="client",
        sealing_label="sealing",
        pin_file=env.pin_file,
        issuer=f"http://127.0.0.1:{_closed_port()}",
        allow_insecure_http=True,
    )
    return dep.write()


def _run(argv: list[str], cwd: Path, **env: str | None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "BROKER_CONFIG"}
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
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


def _setup(case: str, tmp_path: Path, env: SoftHsmEnv) -> tuple[list[str], dict[str, str | None]]:
    """The extra arguments and environment of one failure."""
    softhsm: dict[str, str | None] = {"SOFTHSM2_CONF": str(env.conf_path)}
    if case == "missing config":
        return ["--config", str(tmp_path / "absent.toml")], softhsm
    if case == "invalid TOML":
        bad = tmp_path / "bad.toml"
        bad.write_text("[oauth\n", encoding="utf-8")
        return ["--config", str(bad)], softhsm
    if case == "usage":
        return ["--bogus"], softhsm
    config = _write_deployment(tmp_path, env, token=env.token_label)
    if case == "policy file missing":
        (tmp_path / "policy.toml").unlink()
        return ["--config", str(config)], softhsm
    if case == "SOFTHSM2_CONF names no file":
        return ["--config", str(config)], {"SOFTHSM2_CONF": str(tmp_path / "nope.conf")}
    if case == "token label not found":
        config = _write_deployment(tmp_path, env, token="no-such-token")
        return ["--config", str(config)], softhsm
    raise AssertionError(case)


CASES = [
    Case("missing config", 2, "cannot read configuration file"),
    Case("invalid TOML", 2, "is not valid TOML"),
    Case("usage", 2, "unrecognized arguments: --bogus"),
    Case("policy file missing", 2, "policy"),
    Case("SOFTHSM2_CONF names no file", 2, "nope.conf names no file"),
    Case("token label not found", 1, "no token is labelled 'no-such-token'; tokens here: "),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_serve_and_doctor_exit_alike(case: Case, tmp_path: Path, softhsm_env: SoftHsmEnv) -> None:
    args, env = _setup(case.name, tmp_path, softhsm_env)
    serve = _run(["serve", *args], tmp_path, **env)
    doctor = _run(["doctor", *args], tmp_path, **env)
    assert (serve.returncode, doctor.returncode) == (case.status, case.status), (
        serve.stderr + doctor.stderr + doctor.stdout
    )
    assert serve.stderr.count("\n") == 1 and case.stderr_has in serve.stderr, serve.stderr
    assert case.stderr_has in doctor.stderr + doctor.stdout
    if case.name == "token label not found":
        assert repr(softhsm_env.token_label) in serve.stderr  # the labels that do exist
        assert repr(softhsm_env.token_label) in doctor.stdout
    for proc in (serve, doctor):
        assert softhsm_env.pin not in proc.stdout + proc.stderr


def test_serve_and_doctor_say_the_same_about_an_unreadable_config(tmp_path: Path) -> None:
    absent = str(tmp_path / "absent.toml")
    serve = _run(["serve", "--config", absent], tmp_path)
    doctor = _run(["doctor", "--config", absent], tmp_path)
    assert serve.stderr.removeprefix("broker serve: ") == doctor.stderr.removeprefix(
        "broker doctor: "
    )


def test_unset_softhsm2_conf_is_named_when_the_token_is_missing(
    tmp_path: Path, softhsm_env: SoftHsmEnv
) -> None:
    config = _write_deployment(tmp_path, softhsm_env, token="no-such-token")
    proc = _run(["serve", "--config", str(config)], tmp_path, SOFTHSM2_CONF=None)
    assert proc.returncode in (1, 2), proc.stderr  # system token directory: absent or unreadable
    assert "SOFTHSM2_CONF is unset, so SoftHSM reads /etc/softhsm/softhsm2.conf" in proc.stderr


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (None, "SOFTHSM2_CONF is unset"),
        ("", "SOFTHSM2_CONF is unset"),
        ("missing.conf", "names no file"),
        ("no-tokendir.conf", "does not exist"),
        ("good.conf", None),
    ],
)
def test_softhsm_conf_hints(setting: str | None, expected: str | None, tmp_path: Path) -> None:
    (tmp_path / "tokens").mkdir()
    (tmp_path / "good.conf").write_text(f"directories.tokendir = {tmp_path / 'tokens'}\n")
    (tmp_path / "no-tokendir.conf").write_text(f"directories.tokendir = {tmp_path / 'gone'}\n")
    environ = (
        {} if setting is None else {"SOFTHSM2_CONF": str(tmp_path / setting) if setting else ""}
    )
    hint = softhsm_conf_hint(environ)
    if expected is None:
        assert hint is None
    else:
        assert hint is not None and expected in hint
