"""``broker doctor`` through the ``broker`` command: real HTTP to a local fake Verifier (plain
HTTP on loopback, ``allow_insecure_http``), the system clock, exit codes and output."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from broker.cli import main
from broker.clock import SystemClock
from broker.doctor.runner import ALL_NAMES
from tests.conftest import SoftHsmEnv
from tests.doctor.conftest import Keys
from tests.doctor.helpers import Deployment, FakeVerifier, make_deployment

pytestmark = pytest.mark.softhsm


@pytest.fixture
def local_verifier() -> Iterator[FakeVerifier]:
    """A :class:`FakeVerifier` answering real HTTP on 127.0.0.1 (port 0)."""
    holder: list[FakeVerifier] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            resp = holder[0].handle(httpx.Request("GET", "http://local" + self.path))
            body = resp.content
            self.send_response(resp.status_code)
            for name, value in resp.headers.items():
                if name.lower() not in ("content-length", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer = f"http://127.0.0.1:{server.server_address[1]}"
    holder.append(FakeVerifier(SystemClock(), issuer=issuer))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def cli_deployment(
    tmp_path: Path, softhsm_env: SoftHsmEnv, keys: Keys, local_verifier: FakeVerifier
) -> Deployment:
    return make_deployment(
        tmp_path,
        now=time.time(),
        token_label=softhsm_env.token_label,
        key_label=keys.client,
        sealing_label=keys.sealing,
        pin_file=softhsm_env.pin_file,
        issuer=local_verifier.issuer,
        allow_insecure_http=True,
    )


def test_cli_json_ready_deployment_exits_0(
    cli_deployment: Deployment,
    local_verifier: FakeVerifier,
    capsys: pytest.CaptureFixture[str],
    softhsm_env: SoftHsmEnv,
) -> None:
    config = cli_deployment.write()
    assert main(["doctor", "--config", str(config), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    doc = json.loads(out)
    assert doc["ok"] is True and doc["config"] == str(config)
    assert [c["name"] for c in doc["checks"]] == list(ALL_NAMES)
    found = {c["name"]: c["status"] for c in doc["checks"]}
    # The SQLite file does not exist yet: serve creates it, the doctor warns and leaves it.
    assert found.pop("store") == "warn"
    assert set(found.values()) == {"ok"}, out
    assert "/.well-known/openid-configuration" in local_verifier.requests
    assert softhsm_env.pin not in out


def test_cli_text_failure_exits_1(
    cli_deployment: Deployment,
    local_verifier: FakeVerifier,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local_verifier.did_key = "other"
    config = cli_deployment.write()
    assert main(["doctor", "--config", str(config)]) == 1
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == len(ALL_NAMES) + 1
    assert any(line.startswith("fail  as.dome_did") for line in lines)
    assert lines[-1].endswith("-- NOT ready")


def test_cli_config_from_environment_and_unreachable_as(
    cli_deployment: Deployment,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli_deployment.sections["oauth"]["issuer"] = "http://127.0.0.1:9"  # discard port: refused
    monkeypatch.setenv("BROKER_CONFIG", str(cli_deployment.write()))
    assert main(["doctor", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    found = {c["name"]: c for c in doc["checks"]}
    assert found["as.discovery"]["status"] == "fail"
    assert found["as.discovery"]["detail"] == (
        "GET http://127.0.0.1:9/.well-known/openid-configuration: connection refused "
        "[as_unavailable]"
    )
    assert found["as.clock_skew"]["status"] == "skip"
    assert found["hsm.selftest"]["status"] == "ok"


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--cert-warn-days", "soon"]) == 2
    assert "must be a number of days" in capsys.readouterr().err
    assert main(["doctor", "--bogus"]) == 2


def test_cli_missing_config_exits_2_like_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing can be checked without a configuration: one stderr line and status 2, as serve."""
    absent = tmp_path / "absent.toml"
    assert main(["doctor", "--config", str(absent)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"broker doctor: configuration: cannot read configuration file {absent}: "
        "No such file or directory [config]\n"
    )
    assert main(["doctor", "--config", str(absent), "--json"]) == 2
    out, _ = capsys.readouterr()
    assert json.loads(out)["error"]["reason"] == "config"
