"""docker-compose.yml, the Dockerfile and deploy/: parsed and checked without a Docker daemon."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import load_settings
from broker.telemetry.redaction import is_sensitive_key

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SECRETS_README = ROOT / "deploy" / "README.md"
EXPECTED_SERVICES = {"broker", "token-init", "verifier", "otel-collector", "jaeger"}
ONE_SHOT = {"token-init"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _bind_sources(service: dict[str, Any]) -> list[str]:
    out = []
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            out.append(source)
    return out


def test_every_service_is_present(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == EXPECTED_SERVICES


def test_build_context_and_dockerfile_exist(services: dict[str, dict[str, Any]]) -> None:
    built = [s for s in services.values() if "build" in s]
    assert {n for n, s in services.items() if "build" in s} == {"broker", "token-init"}
    for service in built:
        context = ROOT / service["build"]["context"]
        assert context.is_dir()
        assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file()


def test_every_mounted_file_exists_in_the_repo(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for source in _bind_sources(service):
            path = (ROOT / source).resolve()
            assert path.exists(), f"{name} mounts {source}, which is not in the repository"
            assert ROOT in path.parents or path == ROOT


def test_every_secret_file_is_documented_as_operator_provided(compose: dict[str, Any]) -> None:
    readme = SECRETS_README.read_text()
    secrets = compose["secrets"]
    assert secrets
    for name, spec in secrets.items():
        source = Path(spec["file"])
        assert source.parts[:3] == (".", "deploy", "secrets") or source.parts[:2] == (
            "deploy",
            "secrets",
        ), f"secret {name} must live under deploy/secrets/"
        assert f"`{name}`" in readme, f"secret {name} is not documented in deploy/README.md"
    ignore = (ROOT / "deploy" / "secrets" / ".gitignore").read_text().split()
    assert ignore[0] == "*", "deploy/secrets/ must never be committed"


def test_services_only_use_declared_secrets(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose["secrets"])
    for name, service in services.items():
        for secret in service.get("secrets", []):
            secret_name = secret if isinstance(secret, str) else secret["source"]
            assert secret_name in declared, f"{name} uses undeclared secret {secret_name}"


def test_no_pin_or_secret_in_any_environment(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        env = service.get("environment", {})
        if isinstance(env, dict):
            items = [(str(k), str(v)) for k, v in env.items()]
        else:
            items = [(e.partition("=")[0], e.partition("=")[2]) for e in env]
        for key, value in items:
            assert not is_sensitive_key(str(key)), f"{name}: environment {key} looks secret"
            assert not re.search(r"(?i)pin|password|secret", str(key)), f"{name}: {key}"
            assert not re.search(r"(?i)pin-value", str(value)), f"{name}: {key} holds a PIN"


def test_pins_reach_services_only_as_secrets(services: dict[str, dict[str, Any]]) -> None:
    assert set(services["token-init"]["secrets"]) >= {"broker_so_pin", "broker_user_pin"}
    assert "broker_user_pin" in services["broker"]["secrets"]
    assert "broker_so_pin" not in services["broker"]["secrets"]  # the SO PIN stays in token-init


def test_startup_order_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name in ("broker", "verifier"):
        depends = services[name]["depends_on"]
        assert depends["token-init"]["condition"] == "service_completed_successfully"
    assert services["broker"]["depends_on"]["verifier"]["condition"] == "service_healthy"
    assert services["otel-collector"]["depends_on"]["jaeger"]["condition"] == "service_healthy"


def test_healthchecks_present(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no"
            continue
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert test and test[0] in ("CMD", "CMD-SHELL"), name
        else:
            reason = service.get("x-healthcheck-exempt", "")
            assert len(reason) > 20, f"{name} has neither a healthcheck nor a documented exemption"


def test_broker_service_runs_serve_with_the_mounted_config(
    services: dict[str, dict[str, Any]],
) -> None:
    broker = services["broker"]
    assert broker["command"] == ["serve", "--config", "/etc/broker/broker.toml"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in broker["volumes"] if v.startswith(".")}
    assert mounts["/etc/broker/broker.toml"] == "./deploy/broker.toml"
    assert mounts["/etc/broker/policy.toml"] == "./deploy/policy.toml"


def test_verifier_is_the_dev_peer(services: dict[str, dict[str, Any]]) -> None:
    verifier = services["verifier"]
    assert verifier["image"].startswith("node:20")
    assert "./tests/peer:/src:ro" in verifier["volumes"]
    assert "npm ci" in " ".join(verifier["command"])
    assert (ROOT / "tests" / "peer" / "package-lock.json").is_file()  # npm ci needs the lockfile
    assert (ROOT / "tests" / "peer" / "peer.mjs").is_file()


def test_collector_exports_to_jaeger(services: dict[str, dict[str, Any]]) -> None:
    collector_cfg = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
    assert collector_cfg["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert "otlp/jaeger" in collector_cfg["service"]["pipelines"]["traces"]["exporters"]
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")


def test_compose_config_is_a_valid_broker_configuration(
    services: dict[str, dict[str, Any]],
) -> None:
    """deploy/broker.toml passes the real loader (files live in the containers, not here)."""
    settings = load_settings(ROOT / "deploy" / "broker.toml", check_files=False)
    assert settings.key.pin_file == Path("/run/secrets/broker_user_pin")
    assert settings.telemetry.endpoint == "http://otel-collector:4317"
    secret_mounts = {f"/run/secrets/{s}" for s in services["broker"]["secrets"]}
    for path in (
        settings.key.pin_file,
        settings.web.tls_cert,
        settings.web.tls_key,
        settings.grpc.server_cert,
        settings.grpc.server_key,
        settings.grpc.client_ca,
        settings.oauth.ca_file,
    ):
        assert str(path) in secret_mounts, f"{path} is not a secret of the broker service"


def test_dockerfile_basics() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, flags=re.MULTILINE)
    assert "softhsm2" in text
    assert re.search(r"^USER broker$", text, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["broker"]' in text
    for source in re.findall(r"^COPY (\S+)", text, flags=re.MULTILINE):
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert "PIN" not in re.sub(r"#.*", "", text).upper().replace("PIP_", "")


def test_token_init_reads_pins_only_from_secret_files() -> None:
    script = (ROOT / "deploy" / "token-init.sh").read_text()
    assert "${SECRETS_DIR:-/run/secrets}" in script
    assert "$secrets_dir/broker_so_pin" in script and "$secrets_dir/broker_user_pin" in script
    assert "--pin " not in script and "pin-value" not in script and "--so-pin " not in script
    assert (ROOT / "softhsm" / "init-token.sh").is_file()
