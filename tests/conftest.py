"""Root fixtures: a private SoftHSM2 token for the whole test session.

``SOFTHSM2_CONF`` is read once per process by SoftHSM, so the session fixture sets it before any
PKCS#11 module is loaded and every SoftHSM test of the run shares that one token directory under
pytest's tmp dir (never /var/lib/softhsm). The token is initialised by ``softhsm/init-token.sh``
with generated PINs in files, so the script is exercised on every run.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.pkcs11.lib import default_module_path
from tests.parallel import longest_first, make_scheduler

ROOT = Path(__file__).resolve().parent.parent
TOKEN_LABEL = "broker-test"

# the `stacks` fixture (whole local systems as processes), shared by tests/e2e and tests/chaos
pytest_plugins = ("tests.stacks",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    longest_first(items)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n N`` (xdist's default ``--dist load``) schedules with :func:`make_scheduler`; another
    ``--dist`` is left to xdist."""
    return make_scheduler(config, log) if config.getvalue("dist") == "load" else None


@dataclass(frozen=True)
class SoftHsmEnv:
    conf_path: Path
    module_path: str
    token_label: str
    pin: str = field(repr=False)
    pin_file: Path
    so_pin_file: Path
    tokens_dir: Path


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


@pytest.fixture(scope="session")
def softhsm_env(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmEnv:
    base = tmp_path_factory.mktemp("softhsm")
    pin = secrets.token_hex(8)
    pin_file = base / "user.pin"
    so_pin_file = base / "so.pin"
    _write_secret(pin_file, pin)
    _write_secret(so_pin_file, secrets.token_hex(8))
    hsm_dir = base / "hsm"
    result = subprocess.run(
        [
            str(ROOT / "softhsm" / "init-token.sh"),
            str(hsm_dir),
            TOKEN_LABEL,
            str(so_pin_file),
            str(pin_file),
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": str(ROOT / ".venv" / "bin" / "python")},
    )
    # the script reads the PINs from their files: its output holds none
    assert result.returncode == 0, f"init-token.sh exited {result.returncode}: {result.stderr}"
    conf = hsm_dir / "softhsm2.conf"
    os.environ["SOFTHSM2_CONF"] = str(conf)  # before this process loads any PKCS#11 module
    return SoftHsmEnv(
        conf_path=conf,
        module_path=default_module_path(),
        token_label=TOKEN_LABEL,
        pin=pin,
        pin_file=pin_file,
        so_pin_file=so_pin_file,
        tokens_dir=hsm_dir / "tokens",
    )


@pytest.fixture(scope="session")
def hsm_store(softhsm_env: SoftHsmEnv) -> Iterator[Pkcs11KeyStore]:
    """A session-wide :class:`broker.keys.pkcs11.Pkcs11KeyStore` on the test token."""
    store = Pkcs11KeyStore(softhsm_env.module_path, softhsm_env.token_label, softhsm_env.pin)
    try:
        yield store
    finally:
        store.close()
