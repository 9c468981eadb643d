"""The proto as a contract: buf lint (STANDARD), buf breaking against the committed baseline image
of the released API, and the service comment listing every ErrorInfo reason the server sends."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
from pathlib import Path

import grpc

from broker import errors as e
from broker.server.errors import (
    REASON_DEADLINE_EXCEEDED,
    REASON_INTERNAL,
    REASON_OVERLOADED,
    status_code_for,
    wire_reason,
)

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "protos/broker/v1/broker.proto"
BASELINE = REPO / "protos/baseline.binpb"
BUF = REPO / "tools/buf/node_modules/.bin/buf"
_ROW = re.compile(r"//   ([a-z][a-z0-9_]*) +([A-Z_]+)")


def buf(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "the buf CLI is missing: run scripts/bootstrap.sh (npm ci in tools/buf)"
    return subprocess.run(
        [str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def expected_reasons() -> dict[str, set[str]]:
    """Every reason the server can send with its status code, from the classes of
    broker/errors.py through the one mapping, plus the reasons no class carries."""
    table: dict[str, set[str]] = {
        REASON_INTERNAL: {"INTERNAL"},
        REASON_DEADLINE_EXCEEDED: {"DEADLINE_EXCEEDED"},
        REASON_OVERLOADED: {"RESOURCE_EXHAUSTED"},
    }
    for _, cls in inspect.getmembers(e, inspect.isclass):
        if issubclass(cls, e.BrokerError) and cls.__module__ == e.__name__:
            table.setdefault(wire_reason(cls), set()).add(status_code_for(cls).name)
    return table


def documented_reasons() -> dict[str, set[str]]:
    text = PROTO.read_text()
    block = text[: text.index("service TokenBroker {")]
    block = block[block.index("Every reason the server can send") :]
    table: dict[str, set[str]] = {}
    for reason, code in _ROW.findall(block):
        table.setdefault(reason, set()).add(code)
    return table


def test_every_reason_keeps_one_status_code() -> None:
    assert {r: c for r, c in expected_reasons().items() if len(c) != 1} == {}


def test_the_service_comment_lists_every_reason_and_its_code() -> None:
    expected = expected_reasons()
    documented = documented_reasons()
    missing = {r: c for r, c in expected.items() if documented.get(r) != c}
    stale = sorted(set(documented) - set(expected))
    assert missing == {}, f"add to the TokenBroker comment in {PROTO.name}: {missing}"
    assert stale == [], f"the TokenBroker comment lists reasons the server no longer sends: {stale}"
    for codes in documented.values():
        assert all(hasattr(grpc.StatusCode, c) for c in codes)


def test_buf_lint_standard_passes() -> None:
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_the_released_baseline() -> None:
    result = buf("breaking", "--against", str(BASELINE.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_catches_a_renamed_field_and_the_lint_exception_is_narrow(
    tmp_path: Path,
) -> None:
    """The baseline really guards the wire: renaming a field, or the service to please
    SERVICE_SUFFIX, is refused; and SERVICE_SUFFIX is only excused for the released file."""
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "protos/broker", tmp_path / "protos/broker")
    copy = tmp_path / "protos/broker/v1/broker.proto"
    original = copy.read_text()
    against = str(BASELINE)

    renamed = "google.protobuf.Duration minimum_ttl = 2;"
    copy.write_text(original.replace("google.protobuf.Duration min_ttl = 2;", renamed))
    result = buf("breaking", "--against", against, cwd=tmp_path)
    assert result.returncode != 0
    assert "min_ttl" in result.stdout + result.stderr

    copy.write_text(original.replace("service TokenBroker {", "service TokenBrokerService {"))
    result = buf("breaking", "--against", against, cwd=tmp_path)
    assert result.returncode != 0
    assert "TokenBroker" in result.stdout + result.stderr

    v2 = tmp_path / "protos/broker/v2/broker.proto"
    v2.parent.mkdir(parents=True)
    v2.write_text(original.replace("package broker.v1;", "package broker.v2;"))
    copy.write_text(original)
    result = buf("lint", cwd=tmp_path)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "broker/v2/broker.proto" in out and "Service" in out
    assert "broker/v1/broker.proto" not in out
