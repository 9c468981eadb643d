"""The client's checked-in generated code is what its protogen produces from protos/ now, and it
can live in one process with the broker's own generated code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

CLIENT_ROOT = Path(__file__).resolve().parents[2] / "clients" / "python"


def load_protogen() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "client_protogen", CLIENT_ROOT / "tools" / "protogen.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_client_generated_code_is_up_to_date(tmp_path: Path) -> None:
    protogen = load_protogen()
    written: list[Path] = protogen.generate(tmp_path)
    assert {p.name for p in written} >= {"broker_pb2.py", "broker_pb2.pyi", "broker_pb2_grpc.py"}
    for rel in written:
        fresh = (tmp_path / rel).read_bytes()
        checked_in = (CLIENT_ROOT / rel).read_bytes()
        assert fresh == checked_in, f"{rel} is stale: run `make proto`"
    produced = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert produced == set(written)


def test_client_grpc_module_imports_its_sibling_from_the_client_package() -> None:
    from broker_client.gen.broker.v1 import broker_pb2, broker_pb2_grpc

    assert broker_pb2.DESCRIPTOR.package == "broker.v1"
    assert broker_pb2.DESCRIPTOR.name == "broker/v1/broker.proto"
    sibling = "broker_dot_v1_dot_broker__pb2"
    assert getattr(broker_pb2_grpc, sibling) is broker_pb2
    assert broker_pb2.AccessToken.__module__ == "broker_client.gen.broker.v1.broker_pb2"


def test_client_and_broker_generated_code_load_together_and_agree_on_the_wire() -> None:
    from broker_client.gen.broker.v1 import broker_pb2 as client_pb

    from broker.server.gen.broker.v1 import broker_pb2 as server_pb

    request = client_pb.GetAccessTokenRequest(grant_id="g-1")
    request.min_ttl.FromSeconds(30)
    decoded = server_pb.GetAccessTokenRequest.FromString(request.SerializeToString())
    assert (decoded.grant_id, decoded.min_ttl.seconds) == ("g-1", 30)
    assert client_pb.DESCRIPTOR.services_by_name["TokenBroker"].full_name == (
        server_pb.DESCRIPTOR.services_by_name["TokenBroker"].full_name
    )
