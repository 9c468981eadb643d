"""``[grpc]``: the mTLS API for internal services (bind address, TLS material, policy, limits)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from broker.config.section import Section
from broker.errors import ConfigError


@dataclass(frozen=True)
class GrpcSettings:
    """``[grpc]``: the mTLS API for internal services."""

    server_cert: Path
    server_key: Path
    client_ca: Path
    policy_file: Path
    bind: str = "0.0.0.0:50051"
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 100
    reflection: bool = False
    cn_identities: bool = False
    """Name a caller by its certificate's subject CN (as ``cn:<CN>``) when it has no URI SAN:
    an opt-in for non-SPIFFE PKIs. Off: the one URI SAN, a SPIFFE ID, is the only identity."""

    @property
    def host(self) -> str:
        return split_bind(self.bind, "[grpc].bind")[0]

    @property
    def port(self) -> int:
        return split_bind(self.bind, "[grpc].bind")[1]


def split_bind(value: str, key: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{key} must be host:port (IPv6 as [::1]:50051)")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"{key} port must be within [0, 65535]")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"{key} has an unterminated IPv6 bracket")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise ConfigError(f"{key} has an invalid IPv6 address") from exc
    elif ":" in host:
        raise ConfigError(f"{key}: write IPv6 hosts in brackets, as [::]:50051")
    return host, port


def parse_grpc(section: Section) -> GrpcSettings:
    bind = section.string("bind", default="0.0.0.0:50051")
    assert bind is not None
    split_bind(bind, section.key("bind"))
    return GrpcSettings(
        server_cert=section.req_path("server_cert"),
        server_key=section.req_path("server_key"),
        client_ca=section.req_path("client_ca"),
        policy_file=section.req_path("policy_file"),
        bind=bind,
        max_message_bytes=section.integer(
            "max_message_bytes", 4 * 1024 * 1024, low=1024, high=64 * 1024 * 1024
        ),
        max_concurrent_rpcs=section.integer("max_concurrent_rpcs", 100, low=1, high=100_000),
        reflection=section.boolean("reflection", False),
        cn_identities=section.boolean("cn_identities", False),
    )
