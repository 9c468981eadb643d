"""The doctor's ``credential`` check over credentials a test issuer really signs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.credentials.lear import parse_credential
from broker.credentials.store import save_credential
from broker.doctor.credential import check_credential
from broker.doctor.result import DEFAULT_WARN_DAYS, Status
from broker.doctor.runner import ALL_NAMES
from broker.keys.didkey import did_from_public_key
from tests.clock import FakeClock
from tests.credentials.issuer import TestIssuer

ISSUED = datetime(2026, 6, 1, tzinfo=UTC)


def new_did() -> str:
    return did_from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, str]:
    """A credential valid for 60 days from ISSUED, stored; and the did it is bound to."""
    did = new_did()
    jwt = TestIssuer.self_signed().issue(did, now=ISSUED, valid_for=timedelta(days=60))
    path = tmp_path / "lear-credential-machine.jwt"
    save_credential(path, parse_credential(jwt))
    return path, did


def at(days: float) -> FakeClock:
    return FakeClock((ISSUED + timedelta(days=days)).timestamp())


def test_credential_check_is_in_the_report() -> None:
    assert ALL_NAMES[-1] == "credential"


def test_ok_with_time_left(stored: tuple[Path, str]) -> None:
    path, did = stored
    result = check_credential(path, did, at(10), DEFAULT_WARN_DAYS)
    assert result.status is Status.OK, result.detail
    assert "50 days left" in result.detail


def test_warns_29_days_before_expiry(stored: tuple[Path, str]) -> None:
    path, did = stored
    result = check_credential(path, did, at(31), DEFAULT_WARN_DAYS)
    assert result.status is Status.WARN and "29 days left" in result.detail


def test_fails_after_expiry(stored: tuple[Path, str]) -> None:
    path, did = stored
    result = check_credential(path, did, at(60.001), DEFAULT_WARN_DAYS)
    assert result.status is Status.FAIL and "[expired]" in result.detail


def test_fails_when_no_longer_bound_to_the_configured_key(stored: tuple[Path, str]) -> None:
    path, did = stored
    other = new_did()
    result = check_credential(path, other, at(1), DEFAULT_WARN_DAYS)
    assert result.status is Status.FAIL and "[not_bound]" in result.detail
    assert did in result.detail and other in result.detail


def test_ok_without_a_credential(tmp_path: Path) -> None:
    assert check_credential(tmp_path / "none.jwt", new_did(), at(0), 30).status is Status.OK
    assert check_credential(None, None, at(0), 30).status is Status.OK


def test_fails_on_a_damaged_file(stored: tuple[Path, str]) -> None:
    path, did = stored
    path.write_text(path.read_text()[:-20] + "\n")
    result = check_credential(path, did, at(1), DEFAULT_WARN_DAYS)
    assert result.status is Status.FAIL
