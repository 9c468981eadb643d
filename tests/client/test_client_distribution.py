"""The client distribution needs only grpcio and protobuf: none of the broker's heavy
dependencies, declared or imported."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIGHT = {"grpcio", "protobuf"}


def names(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }


def test_client_declares_only_grpcio_and_protobuf() -> None:
    client = tomllib.loads((REPO / "clients/python/pyproject.toml").read_text())["project"]
    broker = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    broker_reqs = list(broker["dependencies"])
    broker_reqs += broker["optional-dependencies"]["postgres"]
    heavy = names(broker_reqs) - LIGHT - {"httpx"}
    assert {"python-pkcs11", "psycopg", "uvicorn"} <= heavy  # the comparison means something
    assert client["name"] == "dome-token-broker-client"
    assert names(client["dependencies"]) == LIGHT
    extras = client["optional-dependencies"]
    assert names(extras["httpx"]) == {"httpx"}
    assert names(extras["requests"]) == {"requests"}
    assert names(extras["dev"]) == {"grpcio-tools"}  # regenerating the stubs only
    assert set(extras) == {"httpx", "requests", "dev"}


def test_importing_the_client_loads_no_broker_module() -> None:
    probe = (
        "import sys, broker_client, broker_client.gen.broker.v1.broker_pb2_grpc\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(top & {'broker', 'pkcs11', 'psycopg', 'uvicorn', 'starlette',"
        " 'opentelemetry', 'jwcrypto', 'httpx', 'requests', 'cryptography'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "[]"
