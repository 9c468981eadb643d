"""deploy/healthcheck.py (the image's HEALTHCHECK) against the real gRPC server over mTLS."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from tests.server.conftest import Harness, make_harness
from tests.server.pki import Ca, Issued

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "deploy" / "healthcheck.py"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Harness]:
    h, provider = await make_harness(tmp_path)
    yield h
    await h.running.stop(None)
    provider.shutdown()


def client_dir(tmp_path: Path, client: Issued) -> Path:
    out = tmp_path / "dev-client"
    out.mkdir()
    (out / "cert.pem").write_bytes(client.cert_pem)
    (out / "key.pem").write_bytes(client.key_pem)
    return out


async def run_probe(h: Harness, tmp_path: Path, client: Path) -> tuple[int, str]:
    ca_file = tmp_path / "server-ca.pem"
    ca_file.write_bytes(h.server_ca.pem)
    env = {
        "BROKER_HEALTH_TARGET": f"127.0.0.1:{h.port}",
        "BROKER_HEALTH_SERVER_NAME": "broker.test",
        "BROKER_HEALTH_SERVER_CA": str(ca_file),
        "BROKER_HEALTH_CLIENT_DIR": str(client),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROBE),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_probe_passes_when_serving(served: Harness, tmp_path: Path) -> None:
    client = served.ca.issue(uris=("spiffe://example.org/dev-client",))
    code, out = await run_probe(served, tmp_path, client_dir(tmp_path, client))
    assert (code, out.strip()) == (0, "SERVING")


async def test_probe_fails_when_not_serving(served: Harness, tmp_path: Path) -> None:
    await served.running.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    client = served.ca.issue(uris=("spiffe://example.org/dev-client",))
    code, out = await run_probe(served, tmp_path, client_dir(tmp_path, client))
    assert (code, out.strip()) == (1, "NOT_SERVING")


async def test_probe_fails_with_a_client_certificate_of_another_ca(
    served: Harness, tmp_path: Path
) -> None:
    stranger = Ca("other-ca").issue(uris=("spiffe://example.org/dev-client",))
    code, out = await run_probe(served, tmp_path, client_dir(tmp_path, stranger))
    assert code == 1 and out.startswith("unhealthy: ")
    assert "PRIVATE KEY" not in out


async def test_probe_without_the_dev_client_certificate_says_which_file(
    served: Harness, tmp_path: Path
) -> None:
    code, out = await run_probe(served, tmp_path, tmp_path / "absent")
    assert code == 2
    assert str(tmp_path / "absent" / "key.pem") in out
