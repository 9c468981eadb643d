"""The distribution as built: a wheel of this tree (built from a copy of what the Dockerfile's build
stage copies, plus the top-level ``devtools/`` package next to ``broker/`` as in a checkout), its
file list and its metadata."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_INPUTS = ("pyproject.toml", "README.md", "broker")
NOT_SHIPPED = ("devtools",)
"""In the checkout next to ``broker/`` (the demo, the local stack, the test peer's launcher):
copied into the build context too, so the file list shows that package discovery leaves it out."""


def copy_build_context(dest: Path) -> Path:
    """What the Dockerfile's build stage copies (pyproject.toml, README.md, broker/), plus
    :data:`NOT_SHIPPED`."""
    dest.mkdir()
    for name in (*BUILD_INPUTS, *NOT_SHIPPED):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(source, dest / name)
    return dest


def build_wheel(context: Path, out: Path) -> Path:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--wheel-dir", str(out), str(context)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("dome_token_broker-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    return build_wheel(copy_build_context(base / "src"), base / "dist")


@pytest.fixture(scope="module")
def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


@pytest.fixture(scope="module")
def metadata(wheel: Path, names: list[str]) -> Message:
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    with zipfile.ZipFile(wheel) as zf:
        return Parser().parsestr(zf.read(meta).decode())


def requires(metadata: Message) -> list[str]:
    return [r.replace(" ", "") for r in metadata.get_all("Requires-Dist") or []]


def test_wheel_holds_the_broker_package_only(names: list[str]) -> None:
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"broker", "dome_token_broker-0.1.0.dist-info"}
    assert not [n for n in names if n.startswith(("tests/", "bench/", "clients/", "deploy/"))]
    assert not [n for n in names if "devtools" in n or n.endswith("/demo.py")]
    assert "broker/py.typed" in names
    assert "broker/server/gen/broker/v1/broker_pb2.py" in names
    assert "broker/cli/__init__.py" in names and "broker/cli/__main__.py" in names
    assert "broker/cli/keys_rotate_ledger.py" in names
    assert "broker/config/__init__.py" in names and "broker/config/section.py" in names
    assert "broker/tokens/stores/postgres_driver.py" in names


def test_metadata_names_the_distribution_and_its_project_facts(metadata: Message) -> None:
    assert metadata["Name"] == "dome-token-broker"
    assert metadata["Version"] == "0.1.0"
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Summary"].startswith("HSM-backed OAuth 2.1")
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert "Typing :: Typed" in (metadata.get_all("Classifier") or [])
    assert metadata["Author"] or metadata["Author-email"]
    assert metadata.get_payload(), "README as long description"


def test_runtime_requirements_are_ranges_without_build_tools_or_the_driver(
    metadata: Message,
) -> None:
    runtime = [r for r in requires(metadata) if "extra==" not in r]
    names = {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0] for r in runtime}
    assert {"grpcio", "protobuf", "python-pkcs11", "cryptography", "httpx", "uvicorn"} <= names
    assert "grpcio-tools" not in names and "psycopg" not in names
    for requirement in runtime:
        assert "==" not in requirement, f"{requirement}: a range, the lock pins"
        assert "<" in requirement, f"{requirement}: bounded below the next major"


def test_extras_postgres_test_and_dev(metadata: Message) -> None:
    assert set(metadata.get_all("Provides-Extra") or []) == {"postgres", "test", "dev"}
    by_extra = requires(metadata)
    assert 'psycopg[binary]<4,>=3.3.9;extra=="postgres"' in by_extra
    assert 'grpcio-tools==1.85.1;extra=="dev"' in by_extra
    assert any(r.startswith("pytest") and 'extra=="test"' in r for r in by_extra)


def test_console_script_is_broker(wheel: Path, names: list[str]) -> None:
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points).decode()
    assert "[console_scripts]" in text and "broker = broker.cli:main" in text
