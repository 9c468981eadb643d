"""docker-compose.yml, the Dockerfile and deploy/: parsed and checked without a Docker daemon."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.app.settings import load_settings
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
    assert {n for n, s in services.items() if "build" in s} == {"broker", "token-init", "verifier"}
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


def test_verifier_is_the_dev_peer_built_at_build_time(services: dict[str, dict[str, Any]]) -> None:
    verifier = services["verifier"]
    assert verifier["build"]["context"] == "./tests/peer"
    assert "npm" not in " ".join(verifier.get("command", []))  # nothing installed at start
    assert not [v for v in verifier["volumes"] if v.startswith(".")]  # no source bind mount
    dockerfile = (ROOT / "tests" / "peer" / "Dockerfile").read_text()
    assert re.search(r"^FROM node:20", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^RUN npm ci --omit=dev", dockerfile, flags=re.MULTILINE)
    assert dockerfile.index("COPY package.json package-lock.json") < dockerfile.index("RUN npm ci")
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE):
        for name in source.split():
            assert (ROOT / "tests" / "peer" / name).is_file(), name
    assert "node_modules" in (ROOT / "tests" / "peer" / ".dockerignore").read_text()


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
    base = re.search(r"^ARG BASE=(\S+)$", text, flags=re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base[1])
    assert re.findall(r"^FROM (.*)$", text, flags=re.MULTILINE) == [
        "${BASE} AS build",
        "${BASE} AS runtime",
    ]
    runtime = text.split("AS runtime", 1)[1]
    assert "softhsm2" in runtime and "opensc" in runtime
    for tool in ("gcc", "build-essential", "grpcio-tools", "grpc_tools"):
        assert tool not in runtime
    assert re.search(r"^USER 10001:10001$", text, flags=re.MULTILINE)
    assert "--uid 10001" in text and "--gid 10001" in text
    assert 'ENTRYPOINT ["broker"]' in text
    assert re.search(
        r'^HEALTHCHECK .*\n\s+CMD \["python", "/opt/broker/deploy/healthcheck.py"\]',
        text,
        flags=re.MULTILINE,
    )
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.MULTILINE):
        for name in source.split():
            assert (ROOT / name).exists(), f"Dockerfile copies {name}, which does not exist"
    assert "PIN" not in re.sub(r"#.*", "", text).upper().replace("PIP_", "")


def test_build_context_excludes_secrets_venvs_and_tests() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignore = [line for line in lines if line and not line.startswith("#")]
    assert ignore[0] == "*"  # nothing unless listed
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert not [
        a
        for a in allowed
        if a.startswith(("deploy/secrets", ".venv", "tests", "bench", "devtools"))
    ]
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    for name in " ".join(copied).split():
        assert any(name == a.rstrip("/") or name.startswith(a) for a in allowed), name


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_file_works_for_compose_v2_and_docker_compose_v1(compose: dict[str, Any]) -> None:
    assert "version" not in compose  # obsolete in v2, optional in v1 since 1.27
    assert "name" not in compose  # not in v1's schema: the project name comes from .env
    env = (ROOT / ".env").read_text().splitlines()
    assert "COMPOSE_PROJECT_NAME=broker" in env


def test_broker_health_is_the_grpc_probe_with_the_dev_client_certificate(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    broker, init = services["broker"], services["token-init"]
    assert broker["healthcheck"]["test"] == ["CMD", "python", "/opt/broker/deploy/healthcheck.py"]
    assert "grpc_server_ca" in broker["secrets"]  # the probe verifies the server with it
    assert "dev-client:/var/lib/broker-dev-client:ro" in broker["volumes"]
    assert "dev-client:/var/lib/broker-dev-client" in init["volumes"]
    assert {"grpc_client_ca", "grpc_client_ca_key"} <= set(init["secrets"])
    assert "grpc_client_ca_key" not in broker["secrets"]  # the CA key stays in token-init
    assert init["environment"]["DEV_CLIENT_DIR"] == "/var/lib/broker-dev-client"
    assert "dev-client" in compose["volumes"]


def test_compose_check_uses_the_installed_tool_or_skips(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "compose-check.sh"
    assert "compose-check:" in (ROOT / "Makefile").read_text()
    bare = subprocess.run(
        ["bash", str(script)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    if not shutil.which("docker", path="/usr/bin:/bin") and not shutil.which(
        "docker-compose", path="/usr/bin:/bin"
    ):
        assert bare.returncode == 0 and "skipped" in bare.stdout
    fake = tmp_path / "docker-compose"
    fake.write_text(f'#!/bin/sh\necho "$@" >{tmp_path}/args\n')
    fake.chmod(0o755)
    with_v1 = subprocess.run(
        ["bash", str(script)],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert with_v1.returncode == 0, with_v1.stderr
    assert (tmp_path / "args").read_text().split() == ["-f", "docker-compose.yml", "config", "-q"]


def test_token_init_reads_pins_only_from_secret_files() -> None:
    script = (ROOT / "deploy" / "token-init.sh").read_text()
    assert "${SECRETS_DIR:-/run/secrets}" in script
    assert "$secrets_dir/broker_so_pin" in script and "$secrets_dir/broker_user_pin" in script
    assert "--pin " not in script and "pin-value" not in script and "--so-pin " not in script
    assert (ROOT / "softhsm" / "init-token.sh").is_file()
