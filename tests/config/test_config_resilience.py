"""Settings of G04 (``[store].emergency_dir``) and C09 (``[oauth].compensate_skew``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.app.settings import load_settings
from broker.errors import ConfigError
from tests.config.test_config import changed, dump_toml

Doc = dict[str, dict[str, Any]]


@pytest.fixture
def doc(tmp_path: Path) -> Doc:
    for name in ("user_pin", "web.crt", "web.key", "grpc.crt", "grpc.key", "ca.pem", "policy.toml"):
        (tmp_path / name).write_text("x")
    (tmp_path / "user_pin").chmod(0o600)
    return {
        "key": {
            "uri": f"pkcs11:token=broker;object=c;id=%01?pin-source=file:{tmp_path}/user_pin",
            "sealing_key_label": "sealing",
        },
        "oauth": {
            "issuer": "https://verifier.example.org",
            "redirect_uri": "https://broker.example.org/callback",
        },
        "web": {"public_base_url": "https://broker.example.org"},
        "grpc": {
            "server_cert": "grpc.crt",
            "server_key": "grpc.key",
            "client_ca": "ca.pem",
            "policy_file": "policy.toml",
        },
        "store": {"kind": "sqlite", "path": "db/broker.db"},
    }


def load(tmp_path: Path, doc: Doc) -> Any:
    (tmp_path / "db").mkdir(exist_ok=True)
    path = tmp_path / "broker.toml"
    path.write_text(dump_toml(doc))
    return load_settings(path)


def test_c09_compensate_skew_defaults_off_and_parses(tmp_path: Path, doc: Doc) -> None:
    assert load(tmp_path, doc).oauth.compensate_skew is False
    assert load(tmp_path, changed(doc, "oauth", "compensate_skew", True)).oauth.compensate_skew


def test_c09_compensate_skew_must_be_a_boolean(tmp_path: Path, doc: Doc) -> None:
    with pytest.raises(ConfigError, match="compensate_skew"):
        load(tmp_path, changed(doc, "oauth", "compensate_skew", "yes"))


def test_g04_emergency_dir_defaults_next_to_the_sqlite_file(tmp_path: Path, doc: Doc) -> None:
    assert load(tmp_path, doc).store.emergency_dir == tmp_path / "db" / "emergency"


def test_g04_emergency_dir_resolves_relative_to_the_config(tmp_path: Path, doc: Doc) -> None:
    settings = load(tmp_path, changed(doc, "store", "emergency_dir", "rescue"))
    assert settings.store.emergency_dir == tmp_path / "rescue"


def test_g04_postgres_has_no_default_emergency_dir(tmp_path: Path, doc: Doc) -> None:
    pg = changed(doc, "store", "kind", "postgres")
    del pg["store"]["path"]
    pg["store"]["dsn"] = "postgresql://broker@db/broker"
    assert load(tmp_path, pg).store.emergency_dir is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("user_pin", "not a directory"),
        ("missing/rescue", "does not exist"),
        ("db", "its own directory"),
        (3, "emergency_dir"),
    ],
)
def test_g04_bad_emergency_dir_is_rejected(
    tmp_path: Path, doc: Doc, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, changed(doc, "store", "emergency_dir", value))
