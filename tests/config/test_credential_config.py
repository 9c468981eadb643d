"""``[credential] path``: optional; default next to the audit log; its directory must exist."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from broker.credentials.store import credential_path
from broker.errors import ConfigError
from tests.config.test_config import Loader, base, load

__all__ = ["base", "load"]  # fixtures


def test_credential_path_defaults_next_to_the_audit_log(
    base: dict[str, dict[str, Any]], load: Loader, tmp_path: Path
) -> None:
    doc = copy.deepcopy(base)
    doc["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    settings = load(doc)
    assert settings.credential.path is None
    found = credential_path(settings.credential.path, settings.audit.path)
    assert found == tmp_path / "lear-credential-machine.jwt"


def test_credential_path_is_read_and_checked(
    base: dict[str, dict[str, Any]], load: Loader, tmp_path: Path
) -> None:
    doc = copy.deepcopy(base)
    doc["credential"] = {"path": str(tmp_path / "vc.jwt")}
    assert load(doc).credential.path == tmp_path / "vc.jwt"
    doc["credential"] = {"path": str(tmp_path / "no-such-dir" / "vc.jwt")}
    with pytest.raises(ConfigError, match="credential"):
        load(doc)
    doc["credential"] = {"pathh": "x"}
    with pytest.raises(ConfigError):
        load(doc)
