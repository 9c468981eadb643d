"""One log format: the Python ``grpc`` logger and gRPC C-core do not break the JSON stream."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cli.serve import GRPC_CORE_LOG_DEFAULTS, quiet_grpc_core
from broker.telemetry.logging import configure_logging
from broker.telemetry.settings import TelemetrySettings

ROOT = Path(__file__).resolve().parents[2]

# A TLS server, a plaintext HTTP request to it: C-core logs "Handshake failed ..." on stderr.
HANDSHAKE_FAILURE = textwrap.dedent(
    """
    import asyncio, logging, os, sys
    from broker.cli.serve import quiet_grpc_core
    if sys.argv[1] == "quiet":
        quiet_grpc_core(os.environ)
    import grpc
    from broker.telemetry.settings import TelemetrySettings
    from devtools.pki import Ca
    from broker.telemetry.logging import configure_logging

    configure_logging(TelemetrySettings(log_format="json"))

    async def main():
        ca = Ca("ca")
        leaf = ca.issue(cn="s", dns=("broker.test",), server=True)
        server = grpc.aio.server()
        creds = grpc.ssl_server_credentials(
            [(leaf.key_pem, leaf.cert_pem)], root_certificates=ca.pem, require_client_auth=True
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        await writer.drain()
        await reader.read(1024)  # the server closes the connection after the failed handshake
        writer.close()
        await server.stop(0)
        logging.getLogger("broker.probe").warning("done")

    asyncio.run(main())
    """
)


def _run(mode: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in GRPC_CORE_LOG_DEFAULTS}
    proc = subprocess.run(
        [sys.executable, "-c", HANDSHAKE_FAILURE, mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.splitlines()


def test_grpc_core_lines_are_silenced_so_stderr_is_json_only() -> None:
    loud = _run("default")
    # The probe is real: without the defaults C-core writes its own line.
    assert any("Handshake failed" in line and not line.startswith("{") for line in loud), loud
    quiet = _run("quiet")
    assert quiet, "the JSON line of the probe is missing"
    for line in quiet:
        json.loads(line)
    assert json.loads(quiet[-1])["message"] == "done"


def test_quiet_grpc_core_leaves_an_operator_choice_alone() -> None:
    environ = {"GRPC_VERBOSITY": "ERROR"}
    quiet_grpc_core(environ)
    assert environ == {"GRPC_VERBOSITY": "ERROR", "GRPC_TRACE": ""}
    empty: dict[str, str] = {}
    quiet_grpc_core(empty)
    assert empty == {"GRPC_VERBOSITY": "NONE", "GRPC_TRACE": ""}


@pytest.fixture
def grpc_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    root_handlers, level = list(root.handlers), root.level
    logger = logging.getLogger("grpc")
    handlers, propagate = list(logger.handlers), logger.propagate
    yield logger
    logger.handlers[:] = handlers
    logger.propagate = propagate
    for h in list(root.handlers):
        if h not in root_handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_python_grpc_logger_goes_through_the_json_handler(grpc_logger: logging.Logger) -> None:
    stray = io.StringIO()
    grpc_logger.addHandler(logging.StreamHandler(stray))  # e.g. left by a library or a REPL
    grpc_logger.propagate = False
    stream = io.StringIO()
    configure_logging(TelemetrySettings(log_format="json", log_level="INFO"), stream=stream)
    logging.getLogger("grpc._server").error("Exception calling application: %s", "boom")
    (line,) = stream.getvalue().splitlines()
    doc = json.loads(line)
    assert (doc["logger"], doc["level"], doc["message"]) == (
        "grpc._server",
        "ERROR",
        "Exception calling application: boom",
    )
    assert stray.getvalue() == ""
    assert any(isinstance(h, logging.NullHandler) for h in grpc_logger.handlers)
