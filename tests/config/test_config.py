"""``broker.config``: every validation rule, each with the key it must name."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.app.settings import KEY_CHECKS, load_settings
from broker.app.wiring import login_settings
from broker.config import (
    DEFAULT_CONFIG_PATH,
    MachineGrantSettings,
    Settings,
    parse_settings,
    resolve_config_path,
)
from broker.errors import ConfigError

DID = "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY"
PIN = "87654321"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def dump_toml(doc: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


@pytest.fixture
def base(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """A complete, valid document whose files exist under tmp_path."""
    for name in ("user_pin", "web.crt", "web.key", "grpc.crt", "grpc.key", "ca.pem", "policy.toml"):
        (tmp_path / name).write_text("x")
    (tmp_path / "user_pin").write_text(PIN)
    (tmp_path / "user_pin").chmod(0o600)  # group/other access is refused (InsecurePinFile)
    return {
        "key": {
            "uri": f"pkcs11:token=broker;object=client-2026;id=%01?pin-source=file:{tmp_path}/user_pin",
            "sealing_key_label": "sealing-2026",
        },
        "oauth": {
            "issuer": "https://verifier.dome-marketplace.eu",
            "client_id": DID,
            "redirect_uri": "https://broker.example.org/callback",
            "scope": "openid learcredential",
        },
        "web": {
            "public_base_url": "https://broker.example.org",
            "tls_cert": "web.crt",
            "tls_key": "web.key",
        },
        "grpc": {
            "server_cert": "grpc.crt",
            "server_key": "grpc.key",
            "client_ca": "ca.pem",
            "policy_file": "policy.toml",
        },
        "store": {"kind": "sqlite", "path": "broker.db"},
    }


Loader = Callable[[dict[str, dict[str, Any]]], Settings]


@pytest.fixture
def load(tmp_path: Path) -> Loader:
    def _load(doc: dict[str, dict[str, Any]]) -> Settings:
        path = tmp_path / "broker.toml"
        path.write_text(dump_toml(doc))
        return load_settings(path)

    return _load


def changed(
    doc: dict[str, dict[str, Any]], section: str, key: str, value: Any
) -> dict[str, dict[str, Any]]:
    out = copy.deepcopy(doc)
    out.setdefault(section, {})[key] = value
    return out


def removed(doc: dict[str, dict[str, Any]], section: str, key: str) -> dict[str, dict[str, Any]]:
    out = copy.deepcopy(doc)
    del out[section][key]
    return out


def test_valid_document_loads_with_defaults(
    base: dict[str, dict[str, Any]], load: Loader, tmp_path: Path
) -> None:
    s = load(base)
    assert s.oauth.issuer == "https://verifier.dome-marketplace.eu"
    assert s.oauth.client_id == DID
    assert s.oauth.allowed_endpoint_origins == ()
    assert s.oauth.dome_compat is True and s.oauth.use_pkce is True and s.oauth.use_par is False
    assert s.oauth.clock_skew == 60.0 and s.oauth.login_ttl == 600.0
    assert s.key.pin_file == tmp_path / "user_pin"
    assert s.key.sealing_key_label == "sealing-2026"
    # relative paths resolve against the configuration file's directory
    assert s.web.tls_cert == tmp_path / "web.crt"
    assert s.store.path == tmp_path / "broker.db"
    assert s.grpc.reflection is False
    assert (s.grpc.host, s.grpc.port) == ("0.0.0.0", 50051)
    assert s.grpc.max_message_bytes == 4 * 1024 * 1024
    assert s.telemetry.traces == "off" and s.telemetry.log_format == "json"
    assert s.tokens.refresh_threshold == 225.0 and s.tokens.min_serve_ttl == 30.0
    assert s.audit.path is None
    assert s.source == tmp_path / "broker.toml"


def test_settings_are_frozen(base: dict[str, dict[str, Any]], load: Loader) -> None:
    s = load(base)
    with pytest.raises(AttributeError):
        s.oauth.issuer = "https://evil.example"  # type: ignore[misc]


def test_client_id_is_optional(base: dict[str, dict[str, Any]], load: Loader) -> None:
    assert load(removed(base, "oauth", "client_id")).oauth.client_id is None


@pytest.mark.parametrize(
    ("section", "key", "value", "needle"),
    [
        ("oauth", "colour", "blue", "unknown key [oauth].colour"),
        ("grpc", "max_message_byte", 10, "unknown key [grpc].max_message_byte"),
        ("oauth", "use_pkce", "yes", "[oauth].use_pkce must be true or false"),
        ("oauth", "clock_skew", "30", "[oauth].clock_skew must be a number"),
        ("oauth", "clock_skew", True, "[oauth].clock_skew must be a number"),
        ("oauth", "clock_skew", 61, "[oauth].clock_skew must be within [0, 60]"),
        ("oauth", "clock_skew", -1, "[oauth].clock_skew must be within"),
        ("oauth", "http_timeout", 0, "[oauth].http_timeout must be within"),
        ("oauth", "login_ttl", 5, "[oauth].login_ttl must be within"),
        ("oauth", "issuer", 42, "[oauth].issuer must be a string, not an integer"),
        ("oauth", "issuer", " https://a.example", "[oauth].issuer must be non-empty"),
        ("oauth", "issuer", "http://verifier.example", "[oauth].issuer must be an https URL"),
        ("oauth", "issuer", "https://verifier.example?x=1", "[oauth].issuer must not have a query"),
        (
            "oauth",
            "issuer",
            "https://verifier.example#f",
            "[oauth].issuer must not have a fragment",
        ),
        ("oauth", "issuer", "https:///nohost", "[oauth].issuer must be an absolute URL"),
        ("oauth", "issuer", "https://u:p@verifier.example", "[oauth].issuer must not carry user"),
        ("oauth", "issuer", "https://verifier.example:99999", "[oauth].issuer has an invalid port"),
        (
            "oauth",
            "redirect_uri",
            "http://broker.example.org/cb",
            "[oauth].redirect_uri must be an https",
        ),
        (
            "oauth",
            "redirect_uri",
            "https://other.example.org/cb",
            "[oauth].redirect_uri must be served",
        ),
        ("oauth", "client_id", "my-client", "[oauth].client_id must be a did:key"),
        ("oauth", "client_id", "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", "P-256"),
        ("oauth", "scope", "learcredential", "[oauth].scope must be space-separated"),
        ("oauth", "scope", "openid  learcredential", "[oauth].scope must be space-separated"),
        ("oauth", "allowed_endpoint_origins", "https://a.example", "must be an array"),
        ("oauth", "allowed_endpoint_origins", [1], "entries must be strings"),
        ("oauth", "allowed_endpoint_origins", ["http://a.example"], "must be an https origin"),
        ("oauth", "allowed_endpoint_origins", ["https://a.example/token"], "origin only"),
        ("oauth", "allowed_endpoint_origins", ["https://a.example?x"], "origin only"),
        ("oauth", "allowed_endpoint_origins", ["https://u@a.example"], "user information"),
        ("oauth", "allowed_endpoint_origins", ["https://a.example:99999"], "invalid port"),
        ("oauth", "allowed_endpoint_origins", ["https://"], "must name a host"),
        ("oauth", "ca_file", "missing.pem", "[oauth].ca_file: file"),
        ("web", "port", 70000, "[web].port must be within [0, 65535]"),
        ("web", "port", 8443.0, "[web].port must be an integer, not a float"),
        (
            "web",
            "public_base_url",
            "http://broker.example.org",
            "[web].public_base_url must be an https",
        ),
        ("web", "post_login_url", "javascript:alert(1)", "[web].post_login_url must be an https"),
        ("web", "tls_cert", "absent.crt", "[web].tls_cert: file"),
        ("grpc", "bind", "50051", "[grpc].bind must be host:port"),
        ("grpc", "bind", "::1:50051", "[grpc].bind: write IPv6 hosts in brackets"),
        ("grpc", "bind", "[zz]:50051", "[grpc].bind has an invalid IPv6"),
        ("grpc", "bind", "0.0.0.0:70000", "[grpc].bind port must be within"),
        ("grpc", "max_concurrent_rpcs", 0, "[grpc].max_concurrent_rpcs must be within"),
        ("grpc", "reflection", 1, "[grpc].reflection must be true or false"),
        ("store", "kind", "mysql", "[store].kind must be one of"),
        ("store", "dsn", "host=db", "[store].dsn is for kind = 'postgres' only"),
        ("store", "path", "no/such/dir/broker.db", "[store].path: directory"),
        (
            "tokens",
            "min_serve_ttl",
            300,
            "[tokens].min_serve_ttl must be below [tokens].refresh_threshold",
        ),
        ("tokens", "background_interval", 0, "[tokens].background_interval must be within"),
        ("tokens", "status_poll_interval", 0, "[tokens].status_poll_interval must be within"),
        ("tokens", "status_poll_interval", 61, "[tokens].status_poll_interval must be within"),
        ("telemetry", "traces", "zipkin", "[telemetry].traces must be one of"),
        ("telemetry", "metrics", "prometheus", "[telemetry].metrics must be one of"),
        ("telemetry", "endpoint", "collector:4317", "[telemetry].endpoint must be an http(s) URL"),
        ("telemetry", "log_level", "LOUD", "[telemetry].log_level must be one of"),
        ("telemetry", "log_format", "xml", "[telemetry].log_format must be one of"),
        ("audit", "path", "no/such/dir/audit.jsonl", "[audit].path: directory"),
        ("audit", "log", "audit.jsonl", "unknown key [audit].log"),
    ],
)
def test_bad_value_is_rejected_naming_the_key(
    base: dict[str, dict[str, Any]],
    load: Loader,
    *,
    section: str,
    key: str,
    value: Any,
    needle: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        load(changed(base, section, key, value))
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("section", "key", "needle"),
    [
        ("key", "uri", "[key].uri is required"),
        ("oauth", "issuer", "[oauth].issuer is required"),
        ("oauth", "redirect_uri", "[oauth].redirect_uri is required"),
        ("web", "public_base_url", "[web].public_base_url is required"),
        ("grpc", "client_ca", "[grpc].client_ca is required"),
        ("grpc", "policy_file", "[grpc].policy_file is required"),
        ("store", "path", "[store].path is required when kind = 'sqlite'"),
        ("web", "tls_key", "[web].tls_cert and [web].tls_key go together"),
    ],
)
def test_missing_key_is_rejected(
    base: dict[str, dict[str, Any]], load: Loader, section: str, key: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(removed(base, section, key))
    assert needle in str(info.value)


@pytest.mark.parametrize("section", ["key", "oauth", "web", "grpc", "store"])
def test_missing_required_section_is_rejected(
    base: dict[str, dict[str, Any]], load: Loader, section: str
) -> None:
    doc = copy.deepcopy(base)
    del doc[section]
    with pytest.raises(ConfigError, match=rf"section \[{section}\] is required"):
        load(doc)


def test_unknown_section_is_rejected(base: dict[str, dict[str, Any]], load: Loader) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[secrets\]"):
        load({**base, "secrets": {"pin": PIN}})


def test_section_that_is_not_a_table_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[tokens\] must be a table"):
        parse_settings(
            {"tokens": 5}, key_checks=KEY_CHECKS, base_dir=tmp_path, source=tmp_path / "x.toml"
        )


def test_http_issuer_allowed_only_with_allow_insecure_http(
    base: dict[str, dict[str, Any]], load: Loader
) -> None:
    doc = changed(base, "oauth", "issuer", "http://127.0.0.1:3000")
    doc = changed(doc, "oauth", "redirect_uri", "http://127.0.0.1:8443/callback")
    doc = changed(doc, "web", "public_base_url", "http://127.0.0.1:8443")
    with pytest.raises(ConfigError, match=r"\[oauth\].issuer must be an https URL"):
        load(doc)
    s = load(changed(doc, "oauth", "allow_insecure_http", True))
    assert s.oauth.issuer == "http://127.0.0.1:3000"
    assert s.oauth.allow_insecure_http is True


def test_issuer_is_kept_byte_for_byte(base: dict[str, dict[str, Any]], load: Loader) -> None:
    """A01: discovery compares the issuer exactly, so the loader must not normalise it."""
    s = load(changed(base, "oauth", "issuer", "https://Verifier.example/verifier/"))
    assert s.oauth.issuer == "https://Verifier.example/verifier/"


# --- the key URI: secrets only as files --------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        f"pkcs11:token=broker;object=client?pin-value={PIN}",
        f"pkcs11:token=broker;object=client;pin-value={PIN}",
        f"pkcs11:token=broker;object=client?PIN-VALUE={PIN}",
        f"pkcs11:token=broker;object=client?pin%2Dvalue={PIN}",
    ],
)
def test_pin_value_in_key_uri_is_rejected_without_echoing_it(
    base: dict[str, dict[str, Any]], load: Loader, uri: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(changed(base, "key", "uri", uri))
    assert "[key].uri must not contain pin-value" in str(info.value)
    assert PIN not in str(info.value)


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("file:/tmp/key.pem", "must start with 'pkcs11:'"),
        ("pkcs11:object=client?pin-source=file:/run/pin", "'token' is required"),
        ("pkcs11:token=broker?pin-source=file:/run/pin", "'object=' missing"),
        ("pkcs11:token=broker;object=client", "needs pin-source=file:"),
        (
            "pkcs11:token=broker;object=client?pin-source=https://pins.example/p",
            "absolute file path",
        ),
        ("pkcs11:token=broker;object=client?pin-source=file:user_pin", "absolute file path"),
        ("pkcs11:token=broker;object=client?pin-source=file:/nonexistent/pin", "pin-source: file"),
        ("pkcs11:token=broker;object=client?pin-source=file://host/pin", "empty host"),
        ("pkcs11:token=broker;slot-id=1;object=client?pin-source=file:/run/pin", "by label"),
        ("pkcs11:token=broker;object?pin-source=file:/run/pin", "[key].uri: "),
    ],
)
def test_bad_key_uri_is_rejected(
    base: dict[str, dict[str, Any]], load: Loader, uri: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(changed(base, "key", "uri", uri))
    assert "[key].uri" in str(info.value)
    assert needle in str(info.value)


def test_pin_source_forms(base: dict[str, dict[str, Any]], load: Loader, tmp_path: Path) -> None:
    for source in (f"file:{tmp_path}/user_pin", f"file://{tmp_path}/user_pin"):
        s = load(changed(base, "key", "uri", f"pkcs11:token=broker;object=c?pin-source={source}"))
        assert s.key.pin_file == tmp_path / "user_pin"


def test_postgres_dsn_must_not_carry_a_password(
    base: dict[str, dict[str, Any]], load: Loader
) -> None:
    store = {
        "kind": "postgres",
        "dsn": "postgresql://broker@db:5432/broker?passfile=/run/secrets/pgpass",
    }
    ok = load({**base, "store": store})
    assert ok.store.kind == "postgres" and ok.store.path is None
    for dsn in (
        "postgresql://broker:hunter2@db/broker",
        "postgresql://broker@db/broker?password=hunter2",
        "host=db user=broker password=hunter2",
        "host=db user=broker PASSWORD=hunter2",
    ):
        with pytest.raises(ConfigError) as info:
            load({**base, "store": {"kind": "postgres", "dsn": dsn}})
        assert "[store].dsn must not contain a password" in str(info.value)
        assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match=r"\[store\].dsn is required"):
        load({**base, "store": {"kind": "postgres"}})
    with pytest.raises(ConfigError, match=r"\[store\].dsn must be a postgresql:// URI"):
        load({**base, "store": {"kind": "postgres", "dsn": "mysql://db/broker"}})
    with pytest.raises(ConfigError, match=r"\[store\].dsn must be key=value pairs"):
        load({**base, "store": {"kind": "postgres", "dsn": "db broker"}})
    with pytest.raises(
        ConfigError,
        match=r"\[store\].path is for kind = 'postgres'|\[store\].path is for kind = 'sqlite' only",
    ):
        load({**base, "store": {"kind": "postgres", "dsn": "host=db", "path": "broker.db"}})


def test_grpc_bind_accepts_ipv6_and_port_zero(
    base: dict[str, dict[str, Any]], load: Loader
) -> None:
    s = load(changed(base, "grpc", "bind", "[::1]:0"))
    assert (s.grpc.host, s.grpc.port) == ("[::1]", 0)


def test_telemetry_section(base: dict[str, dict[str, Any]], load: Loader) -> None:
    s = load(
        {
            **base,
            "telemetry": {
                "traces": "otlp-grpc",
                "metrics": "otlp-http",
                "endpoint": "http://otel-collector:4317",
                "service_name": "broker-eu",
                "log_format": "text",
                "log_level": "debug",
            },
        }
    )
    assert s.telemetry.traces == "otlp-grpc" and s.telemetry.metrics == "otlp-http"
    assert s.telemetry.log_level == "DEBUG"
    assert s.telemetry.service_name == "broker-eu"


# --- the file itself ---------------------------------------------------------------------------


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(tmp_path / "absent.toml")


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("[oauth\nissuer = 1\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(path)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_bytes(b'[oauth]\nissuer = "\xff"\n')
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_settings(path)


def test_check_files_false_skips_existence_checks(
    base: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    doc = changed(base, "grpc", "client_ca", "/nonexistent/ca.pem")
    path = tmp_path / "broker.toml"
    path.write_text(dump_toml(doc))
    with pytest.raises(ConfigError, match=r"\[grpc\].client_ca: file"):
        load_settings(path)
    assert load_settings(path, check_files=False).grpc.client_ca == Path("/nonexistent/ca.pem")


def test_config_path_only_env_override() -> None:
    assert resolve_config_path("/etc/x.toml", {"BROKER_CONFIG": "/env.toml"}) == Path("/etc/x.toml")
    assert resolve_config_path(None, {"BROKER_CONFIG": "/env.toml"}) == Path("/env.toml")
    assert resolve_config_path(None, {"BROKER_CONFIG": "  "}) == DEFAULT_CONFIG_PATH
    assert resolve_config_path(None, {}) == DEFAULT_CONFIG_PATH


def test_environment_does_not_override_settings(
    base: dict[str, dict[str, Any]], load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_OAUTH_ISSUER", "https://evil.example")
    monkeypatch.setenv("BROKER_ISSUER", "https://evil.example")
    assert load(base).oauth.issuer == "https://verifier.dome-marketplace.eu"


def test_example_file_is_valid_and_documents_every_setting() -> None:
    """broker.example.toml at the repo root loads (without file checks) and sets every key."""
    import dataclasses
    import tomllib

    root = Path(__file__).resolve().parents[2]
    example = root / "broker.example.toml"
    settings = load_settings(example, check_files=False)
    assert settings.oauth.client_id is not None
    text = example.read_text()
    document = tomllib.loads(text)
    for f in dataclasses.fields(Settings):
        if f.name == "source":
            continue
        if f.name == "machine_grants":  # an array of tables, documented as a comment
            for g in dataclasses.fields(MachineGrantSettings):
                assert f"# {g.name} = " in text, f"[[machine_grants]] {g.name} undocumented"
            assert "# [[machine_grants]]" in text
            continue
        section = getattr(settings, f.name)
        fields = {g.name for g in dataclasses.fields(section)} - {"pin_file"}
        # optional file settings and the other store kind are documented as comments
        commented = set(re.findall(r"^# (\w+) = ", text, flags=re.MULTILINE))
        missing = fields - set(document.get(f.name, {})) - commented
        assert not missing, f"broker.example.toml does not set [{f.name}] {sorted(missing)}"
    assert "# dsn = " in text
    assert "verifier.dome-marketplace.eu" in text  # production value
    assert "sbx" in text  # sandbox value


@pytest.mark.parametrize("value", ["issuer", "token_endpoint"])
def test_removed_assertion_audience_is_refused_saying_why(
    base: dict[str, dict[str, Any]], load: Loader, value: str
) -> None:
    """The option let AS metadata choose the assertion's aud: an old file still setting it, even
    to the old default, must not load (nor be ignored silently)."""
    with pytest.raises(ConfigError) as info:
        load(changed(base, "oauth", "assertion_audience", value))
    message = info.value.message
    assert message.startswith("[oauth].assertion_audience was removed")
    assert "always the issuer" in message


def test_allowed_endpoint_origins_are_normalized(
    base: dict[str, dict[str, Any]], load: Loader
) -> None:
    origins = [
        "https://Token.Example.org:443/",
        "https://jwks.example.org:8443",
        "https://a.example",
    ]
    s = load(changed(base, "oauth", "allowed_endpoint_origins", origins))
    assert s.oauth.allowed_endpoint_origins == (
        "https://token.example.org",
        "https://jwks.example.org:8443",
        "https://a.example",
    )


# --- [oauth].refresh_token_lifetime, [tokens].refresh_fraction / refresh_retry_margin ----------

from broker.tokens.schedule import LifetimeKind as _LifetimeKind  # noqa: E402
from broker.tokens.schedule import RefreshTokenLifetime as _RefreshTokenLifetime  # noqa: E402


def test_refresh_schedule_defaults(base: dict[str, dict[str, Any]], load: Loader) -> None:
    settings = load(base)
    assert settings.oauth.refresh_token_lifetime == _RefreshTokenLifetime(_LifetimeKind.ACCESS)
    assert (settings.tokens.refresh_fraction, settings.tokens.refresh_retry_margin) == (0.5, 120)


def test_status_poll_interval_defaults_to_two_seconds_and_is_read(
    base: dict[str, dict[str, Any]], load: Loader
) -> None:
    assert load(base).tokens.status_poll_interval == 2.0
    base.setdefault("tokens", {})["status_poll_interval"] = 0.5
    assert load(base).tokens.status_poll_interval == 0.5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("access", _RefreshTokenLifetime(_LifetimeKind.ACCESS)),
        ("unknown", _RefreshTokenLifetime(_LifetimeKind.UNKNOWN)),
        (86400, _RefreshTokenLifetime(_LifetimeKind.SECONDS, 86400.0)),
    ],
)
def test_refresh_token_lifetime_forms(
    base: dict[str, dict[str, Any]],
    load: Loader,
    value: Any,
    expected: _RefreshTokenLifetime,
) -> None:
    got = load(changed(base, "oauth", "refresh_token_lifetime", value))
    assert got.oauth.refresh_token_lifetime == expected


@pytest.mark.parametrize("value", ["seconds", "3600", 0, -1, 1.5, True, 10**9])
def test_bad_refresh_token_lifetime_is_refused_naming_the_key(
    base: dict[str, dict[str, Any]],
    load: Loader,
    value: Any,
) -> None:
    with pytest.raises(ConfigError, match=r"\[oauth\]\.refresh_token_lifetime"):
        load(changed(base, "oauth", "refresh_token_lifetime", value))


@pytest.mark.parametrize(("key", "value"), [("refresh_fraction", 1.0), ("refresh_fraction", 0)])
def test_bad_schedule_values_are_refused(
    base: dict[str, dict[str, Any]],
    load: Loader,
    key: str,
    value: Any,
) -> None:
    with pytest.raises(ConfigError, match=rf"\[tokens\]\.{key}"):
        load(changed(base, "tokens", key, value))


def _parse(doc: dict[str, Any], tmp_path: Path) -> Settings:
    return parse_settings(
        doc, key_checks=KEY_CHECKS, base_dir=tmp_path, source=tmp_path / "broker.toml"
    )


def test_machine_grants_array_of_tables(base: dict[str, Any], tmp_path: Path) -> None:
    base["machine_grants"] = [{"label": "billing"}, {"label": "ops", "scope": "machine x"}]
    assert _parse(base, tmp_path).machine_grants == (
        MachineGrantSettings(label="billing", scope="machine learcredential"),
        MachineGrantSettings(label="ops", scope="machine x"),
    )
    del base["machine_grants"]
    assert _parse(base, tmp_path).machine_grants == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"label": "billing"}, "array of tables"),
        ([{"label": "a"}, {"label": "a"}], "listed twice"),
        ([{"scope": "machine"}], "label"),
        ([{"label": "a", "extra": 1}], "unknown key"),
        ([{"label": " a"}], "label"),
    ],
)
def test_machine_grants_refused(
    base: dict[str, Any], tmp_path: Path, value: object, message: str
) -> None:
    base["machine_grants"] = value
    with pytest.raises(ConfigError, match=message):
        _parse(base, tmp_path)


def test_a_file_with_several_problems_reports_the_first_in_section_order(
    base: dict[str, dict[str, Any]], load: Loader, tmp_path: Path
) -> None:
    """Which problem serve, doctor and the CLI name is fixed: ``[oauth]`` (its did:key client id),
    then ``[key]`` (its URI), then the other sections, then unknown keys. The key URI and the
    client id are checked while the file is read, not by a later step: a check after loading
    would name ``[grpc].bind`` or an unknown key here instead."""
    doc = changed(base, "oauth", "client_id", "did:key:zBad")
    doc = changed(doc, "key", "uri", f"pkcs11:token=broker;object=client?pin-value={PIN}")
    doc = changed(doc, "grpc", "bind", "nohost")
    doc = changed(doc, "store", "bogus", 1)
    expected = [
        ("oauth", "client_id", DID, "[oauth].client_id must be a did:key"),
        (
            "key",
            "uri",
            f"pkcs11:token=broker;object=client?pin-source=file:{tmp_path}/user_pin",
            "[key].uri must not contain pin-value",
        ),
        ("grpc", "bind", "127.0.0.1:0", "[grpc].bind must be host:port"),
    ]
    for section, key, fixed, message in expected:
        with pytest.raises(ConfigError) as info:
            load(doc)
        assert message in str(info.value)
        assert PIN not in str(info.value)
        doc = changed(doc, section, key, fixed)
    with pytest.raises(ConfigError, match=re.escape("unknown key [store].bogus")):
        load(doc)
    load(removed(doc, "store", "bogus"))


def test_the_login_service_takes_the_public_base_url_and_login_ttl(
    load: Loader, base: dict[str, dict[str, Any]]
) -> None:
    doc = changed(
        changed(base, "web", "public_base_url", "https://broker.example.org/"),
        "oauth",
        "login_ttl",
        120,
    )
    login = login_settings(load(doc))
    assert login.public_base_url == "https://broker.example.org"  # no trailing "/"
    assert login.login_ttl == 120.0
    assert login.kept_for == 120.0  # ended logins stay visible as long as one is pending
