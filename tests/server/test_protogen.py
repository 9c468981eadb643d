"""The checked-in generated code is exactly what protogen produces now."""

from __future__ import annotations

from pathlib import Path

from broker.server import protogen


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    written = protogen.generate(tmp_path)
    assert {p.name for p in written} >= {"broker_pb2.py", "broker_pb2.pyi", "broker_pb2_grpc.py"}
    for rel in written:
        fresh = (tmp_path / rel).read_bytes()
        checked_in = (protogen.REPO_ROOT / rel).read_bytes()
        assert fresh == checked_in, f"{rel} is stale: run `make proto`"
    produced = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert produced == set(written)


def test_generated_grpc_module_imports_its_sibling_by_package() -> None:
    from broker.server.gen.broker.v1 import broker_pb2, broker_pb2_grpc

    assert broker_pb2.DESCRIPTOR.package == "broker.v1"
    sibling = "broker_dot_server_dot_gen_dot_broker_dot_v1_dot_broker__pb2"
    assert getattr(broker_pb2_grpc, sibling) is broker_pb2
