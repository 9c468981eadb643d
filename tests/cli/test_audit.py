"""The hash-chained ceremony audit log (broker/audit.py): chain, tamper detection, concurrency."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from broker.audit import GENESIS, AuditLog, rfc3339_utc, verify_chain
from broker.errors import AuditError
from tests.clock import FakeClock


def _log(path: Path) -> AuditLog:
    return AuditLog(path, operator="alice", host="hsm-1", clock=FakeClock(1_800_000_000.25))


def _fill(path: Path, n: int) -> None:
    log = _log(path)
    for i in range(n):
        log.append(
            "keys.generate",
            outcome="ok" if i % 2 == 0 else "error",
            key_uri=f"pkcs11:token=broker;object=k{i}",
            did="did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY",
            fingerprint="ab" * 32,
            error=None if i % 2 == 0 else "pin_incorrect",
        )


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_have_the_documented_shape_and_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _log(path)
    first = log.append("keys.generate", outcome="ok", key_uri="pkcs11:token=t;object=o")
    second = log.append("keys.destroy", outcome="error", error="confirmation_mismatch")
    assert first.seq == 1 and first.prev == GENESIS
    assert second.seq == 2
    import hashlib

    assert second.prev == hashlib.sha256(first.line).hexdigest()
    obj = json.loads(_lines(path)[1])
    assert list(obj) == [
        "seq",
        "time",
        "operator",
        "host",
        "action",
        "key_uri",
        "did",
        "fingerprint",
        "outcome",
        "error",
        "prev",
        "hash",
    ]
    assert obj["time"] == "2027-01-15T08:00:00.250000Z"
    assert obj["operator"] == "alice" and obj["host"] == "hsm-1"
    assert obj["outcome"] == "error" and obj["error"] == "confirmation_mismatch"
    result = verify_chain(path)
    assert result.ok and result.records == 2 and result.first_bad_seq is None
    assert result.last_hash == second.hash


def test_rfc3339_is_utc_with_z() -> None:
    assert rfc3339_utc(0) == "1970-01-01T00:00:00.000000Z"


def test_file_is_created_0600_and_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    _fill(path, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert verify_chain(path).records == 2


def test_empty_file_verifies_with_zero_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    result = verify_chain(path)
    assert result.ok and result.records == 0


def test_missing_file_is_an_audit_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="does not exist"):
        verify_chain(tmp_path / "nope.jsonl")


def test_edited_middle_record_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 5)
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"operator":"alice"', b'"operator":"mallory"')
    path.write_bytes(b"".join(lines))
    result = verify_chain(path)
    assert not result.ok
    assert result.first_bad_seq == 3 and result.records == 2
    assert result.reason is not None and "hash" in result.reason


def test_edited_record_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 4)
    lines = _lines(path)
    obj = json.loads(lines[1])
    obj["outcome"] = "ok"
    obj["error"] = None
    body = {k: v for k, v in obj.items() if k != "hash"}
    import hashlib

    obj["hash"] = hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()
    lines[1] = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    result = verify_chain(path)
    assert not result.ok and result.first_bad_seq == 3
    assert result.reason is not None and "prev" in result.reason


def test_edited_last_record_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 3)
    lines = _lines(path)
    lines[-1] = lines[-1].replace(b'"action":"keys.generate"', b'"action":"keys.selftest"')
    path.write_bytes(b"".join(lines))
    result = verify_chain(path)
    assert not result.ok and result.first_bad_seq == 3


def test_deleted_record_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 5)
    lines = _lines(path)
    del lines[1]
    path.write_bytes(b"".join(lines))
    result = verify_chain(path)
    assert not result.ok and result.first_bad_seq == 2 and result.records == 1
    assert result.reason is not None and "seq 3" in result.reason


def test_deleted_first_record_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 3)
    path.write_bytes(b"".join(_lines(path)[1:]))
    result = verify_chain(path)
    assert not result.ok and result.first_bad_seq == 1 and result.records == 0


def test_reordered_records_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 5)
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    result = verify_chain(path)
    assert not result.ok and result.first_bad_seq == 3 and result.records == 2


def test_truncated_last_line_is_reported_and_blocks_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 3)
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    result = verify_chain(path)
    assert not result.ok and result.first_bad_seq == 3 and result.records == 2
    assert result.reason is not None and "incomplete" in result.reason
    with pytest.raises(AuditError, match="incomplete"):
        _log(path).append("keys.list", outcome="ok")
    with pytest.raises(AuditError):
        _log(path).check_writable()
    assert path.read_bytes() == data[:-20]  # nothing was appended


def test_garbage_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 2)
    with path.open("ab") as fh:
        fh.write(b"not json\n")
    result = verify_chain(path)
    assert not result.ok and result.first_bad_seq == 3
    assert result.reason == "line is not valid JSON"
    with pytest.raises(AuditError, match="last record is not valid"):
        _log(path).append("keys.list", outcome="ok")


def test_reformatted_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 2)
    lines = _lines(path)
    lines[0] = json.dumps(json.loads(lines[0])).encode() + b"\n"  # same content, spaces added
    path.write_bytes(b"".join(lines))
    result = verify_chain(path)
    assert not result.ok and result.first_bad_seq == 1


def test_append_refuses_a_tampered_tail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _fill(path, 2)
    lines = _lines(path)
    lines[-1] = lines[-1].replace(b'"host":"hsm-1"', b'"host":"hsm-2"')
    path.write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="altered"):
        _log(path).append("keys.list", outcome="ok")


def test_bad_outcome_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outcome"):
        _log(tmp_path / "a.jsonl").append("keys.list", outcome="maybe")


def test_unwritable_location_is_an_audit_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot open"):
        _log(tmp_path / "missing-dir" / "audit.jsonl").append("keys.list", outcome="ok")


def test_threads_appending_concurrently_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _log(path)

    def worker() -> None:
        for _ in range(25):
            log.append("keys.show", outcome="ok")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify_chain(path)
    assert result.ok and result.records == 100


_WRITER = """
import sys
from broker.audit import AuditLog
log = AuditLog(sys.argv[1], operator=sys.argv[2], host="h")
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
for i in range(int(sys.argv[3])):
    log.append("keys.show", outcome="ok", key_uri="pkcs11:token=t;object=o" + str(i))
"""


def test_two_processes_appending_concurrently_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    per_process = 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"op{n}", str(per_process)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ},
        )
        for n in range(2)
    ]
    for p in procs:  # both processes are up before either writes
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
    for p in procs:
        assert p.wait() == 0
    result = verify_chain(path)
    assert result.ok, result.reason
    assert result.records == 2 * per_process
    operators = [json.loads(line)["operator"] for line in _lines(path)]
    assert operators.count("op0") == per_process and operators.count("op1") == per_process
