"""The image's HEALTHCHECK: grpc.health.v1 Check over mTLS; exit 0 only when SERVING.

Runs inside the broker container with the image's own packages (grpcio, grpcio-health-checking)
and no extra binary. The broker's gRPC listener requires a client certificate, so the probe
presents the dev client certificate that token-init issues (deploy/token-init.sh) and verifies
the server against the CA of grpc_server_cert. Inputs (environment, none secret):

  BROKER_HEALTH_TARGET       host:port of the gRPC listener   (default 127.0.0.1:50051)
  BROKER_HEALTH_SERVER_NAME  name the server certificate has  (default broker)
  BROKER_HEALTH_SERVER_CA    CA of the server certificate     (default /run/secrets/grpc_server_ca)
  BROKER_HEALTH_CLIENT_DIR   cert.pem + key.pem of the client (default /var/lib/broker-dev-client)
  BROKER_HEALTH_SERVICE      health service name              (default "", the whole server)

Prints one line (the status or the failure's kind), never key material.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def probe(environ: dict[str, str]) -> tuple[int, str]:
    target = environ.get("BROKER_HEALTH_TARGET", "127.0.0.1:50051")
    server_name = environ.get("BROKER_HEALTH_SERVER_NAME", "broker")
    server_ca = Path(environ.get("BROKER_HEALTH_SERVER_CA", "/run/secrets/grpc_server_ca"))
    client_dir = Path(environ.get("BROKER_HEALTH_CLIENT_DIR", "/var/lib/broker-dev-client"))
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=server_ca.read_bytes(),
            private_key=(client_dir / "key.pem").read_bytes(),
            certificate_chain=(client_dir / "cert.pem").read_bytes(),
        )
    except OSError as exc:
        return 2, f"unhealthy: cannot read {exc.filename} ({exc.strerror})"
    options = [("grpc.ssl_target_name_override", server_name)]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=environ.get("BROKER_HEALTH_SERVICE", ""))
        try:
            response = stub.Check(request, timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            return 1, f"unhealthy: {exc.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return (0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1), status


def main() -> int:
    code, line = probe(dict(os.environ))
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
