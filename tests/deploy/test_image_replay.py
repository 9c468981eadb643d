"""The image's install steps replayed without a container runtime.

The pip commands are read from the Dockerfile's RUN lines (build stage: wheels from
requirements/runtime.lock and this distribution's wheel; runtime stage: an offline, hash-checked
install of those wheels) and run in two clean venvs, with the image's paths mapped into a temp
dir. From the runtime venv, the installed ``broker`` command initialises a SoftHSM token
(deploy/token-init.sh, as the compose token-init service does), runs ``broker keys selftest``
and ``broker doctor``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.pki import Ca
from tests.deploy.test_wheel import copy_build_context

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def stage_runs(stage: str) -> list[list[str]]:
    """The pip commands of one stage's RUN instructions, in order, as argv lists."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)
    (body,) = [s for s in stages if re.match(rf"\S+ AS {stage}\b", s)]
    commands = []
    for line in re.findall(r"^RUN (.*)$", body, flags=re.MULTILINE):
        for part in re.sub(r"--mount=\S+", "", line).split("&&"):
            argv = shlex.split(part)
            if argv and argv[0] == "pip":
                commands.append(argv)
    return commands


def test_dockerfile_stages_install_from_the_lock_only() -> None:
    build = stage_runs("build")
    runtime = stage_runs("runtime")
    assert build == [
        [
            "pip",
            "wheel",
            "--require-hashes",
            "--wheel-dir",
            "/wheels",
            "-r",
            "requirements/runtime.lock",
        ],
        ["pip", "wheel", "--no-deps", "--wheel-dir", "/wheels", "."],
    ]
    assert runtime == [
        ["pip", "install", "--no-index", "--find-links", "/wheels", "--require-hashes", "-r", "/tmp/runtime.lock"],
        ["pip", "install", "--no-index", "--no-deps", "/wheels/dome_token_broker-*.whl"],
    ]  # fmt: skip


def run(argv: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs outside this checkout (cwd /), so ``python -c`` cannot import its ``broker``."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env=env or dict(os.environ),
        cwd="/",
    )


def venv(path: Path) -> Path:
    result = run([sys.executable, "-m", "venv", str(path)])
    assert result.returncode == 0, result.stderr
    return path / "bin"


def replay(commands: list[list[str]], bin_dir: Path, cwd: Path, mapping: dict[str, str]) -> None:
    for argv in commands:
        args = []
        for image_arg in argv[1:]:
            arg = image_arg
            for image_path, here in mapping.items():
                arg = arg.replace(image_path, here)
            if "*" in arg:
                (arg,) = [str(p) for p in Path(arg).parent.glob(Path(arg).name)]
            args.append(arg)
        result = subprocess.run(
            [str(bin_dir / "python"), "-m", "pip", "--disable-pip-version-check", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        assert result.returncode == 0, f"{argv}: {result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def image_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("image")
    context = copy_build_context(base / "src")
    (context / "requirements").mkdir()
    shutil.copy2(ROOT / "requirements" / "runtime.lock", context / "requirements")
    wheels = base / "wheels"
    mapping = {
        "/wheels": str(wheels),
        "/tmp/runtime.lock": str(ROOT / "requirements" / "runtime.lock"),
    }
    replay(stage_runs("build"), venv(base / "build-venv"), context, mapping)
    runtime_bin = venv(base / "runtime-venv")
    replay(stage_runs("runtime"), runtime_bin, base, mapping)
    return runtime_bin


@pytest.mark.slow
def test_runtime_install_has_no_build_or_test_tools_and_imports_every_module(
    image_bin: Path,
) -> None:
    script = """
import importlib, importlib.util, json, pkgutil, broker
missing = [m for m in ("grpc_tools", "pytest", "mypy", "ruff", "respx", "trustme")
           if importlib.util.find_spec(m) is not None]
failed = {}
for info in pkgutil.walk_packages(broker.__path__, "broker."):
    if info.name.endswith(".__main__"):  # `python -m` entry points: importing one runs it
        continue
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = repr(exc)
print(json.dumps({"present": missing, "failed": failed, "file": broker.__file__}))
"""
    result = run([str(image_bin / "python"), "-c", script])
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["present"] == []
    assert "runtime-venv" in out["file"]  # the installed wheel, not this checkout
    # protogen regenerates the stubs at dev time; it alone needs grpcio-tools
    assert set(out["failed"]) == {"broker.server.protogen"}, out["failed"]


@pytest.mark.slow
@pytest.mark.softhsm
def test_installed_broker_runs_selftest_and_doctor_on_a_fresh_token(
    image_bin: Path, tmp_path: Path
) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name, value in (("broker_so_pin", "71829304"), ("broker_user_pin", "50617283")):
        fd = os.open(secrets_dir / name, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "VIRTUAL_ENV")},
        "PATH": f"{image_bin}:/usr/bin:/bin",
        "PYTHON": str(image_bin / "python"),
        "SECRETS_DIR": str(secrets_dir),
        "BROKER_HOME": str(ROOT),  # softhsm/ as the image copies it to /opt/broker
        "HSM_DIR": str(tmp_path / "hsm"),
        "AUDIT_LOG": str(tmp_path / "audit.jsonl"),
        "PEER_DIR": str(tmp_path / "peer"),
        "DEV_CLIENT_DIR": str(tmp_path / "dev-client"),
    }
    init = run(["bash", str(ROOT / "deploy" / "token-init.sh")], env=env)
    assert init.returncode == 0, init.stderr
    env["SOFTHSM2_CONF"] = str(tmp_path / "hsm" / "softhsm2.conf")
    module = "/usr/lib/softhsm/libsofthsm2.so"
    pin_file = secrets_dir / "broker_user_pin"
    key_uri = (
        f"pkcs11:token=broker;object=client-2026?module-path={module}&pin-source=file:{pin_file}"
    )

    selftest = run(
        [
            *(str(image_bin / "broker"), "keys", "selftest", "--key", key_uri),
            *("--audit-log", str(tmp_path / "audit.jsonl"), "--operator", "replay", "--json"),
        ],
        env=env,
    )
    assert selftest.returncode == 0, selftest.stderr
    assert json.loads(selftest.stdout)

    config = write_config(tmp_path, key_uri)
    doctor = run([str(image_bin / "broker"), "doctor", "--config", str(config), "--json"], env=env)
    report = json.loads(doctor.stdout)
    results = report["checks"] if isinstance(report, dict) else report
    status = {r["name"]: r["status"] for r in results}
    assert doctor.returncode == 1  # no authorization server in this test: as.* fail
    assert status["config.load"] == "ok" and status["config.files"] == "ok"
    hsm_checks = {n: s for n, s in status.items() if n.startswith("hsm.")}
    assert hsm_checks and set(hsm_checks.values()) <= {"ok", "warn"}, hsm_checks
    assert status["store"] in ("ok", "warn")
    assert status["as.discovery"] == "fail"
    for output in (init.stdout, init.stderr, selftest.stdout, doctor.stdout, doctor.stderr):
        assert "71829304" not in output and "50617283" not in output


def write_config(tmp_path: Path, key_uri: str) -> Path:
    """deploy/broker.toml with this test's files: the key, TLS material, store and audit log."""
    ca = Ca("replay-ca")
    server = ca.issue(cn="broker", dns=("broker", "localhost"), server=True)
    files = {
        "web_tls_cert": server.cert_pem,
        "web_tls_key": server.key_pem,
        "grpc_server_cert": server.cert_pem,
        "grpc_server_key": server.key_pem,
        "grpc_client_ca": ca.pem,
        "verifier_ca": ca.pem,
    }
    for name, content in files.items():
        fd = os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
    text = (ROOT / "deploy" / "broker.toml").read_text()
    text = re.sub(r'^uri = ".*"$', f'uri = "{key_uri}"', text, count=1, flags=re.MULTILINE)
    text = text.replace("/run/secrets/", f"{tmp_path}/")
    text = text.replace("https://verifier:3000", "https://127.0.0.1:9")
    text = text.replace("/etc/broker/policy.toml", str(ROOT / "deploy" / "policy.toml"))
    text = text.replace("/var/lib/broker/", f"{tmp_path}/")
    text = text.replace(
        'endpoint = "http://otel-collector:4317"', 'endpoint = "http://127.0.0.1:9"'
    )
    config = tmp_path / "broker.toml"
    config.write_text(text)
    return config
