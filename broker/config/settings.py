"""The whole configuration: one frozen :class:`Settings` of frozen sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from broker.config.audit import AuditSettings
from broker.config.grpc import GrpcSettings
from broker.config.key import KeySettings
from broker.config.machine import CredentialSettings, MachineGrantSettings
from broker.config.oauth import OAuthSettings
from broker.config.store import StoreSettings
from broker.config.tokens import TokenSettings
from broker.config.web import WebSettings
from broker.telemetry.settings import TelemetrySettings


@dataclass(frozen=True)
class Settings:
    key: KeySettings
    oauth: OAuthSettings
    web: WebSettings
    grpc: GrpcSettings
    store: StoreSettings
    tokens: TokenSettings
    telemetry: TelemetrySettings
    audit: AuditSettings
    source: Path  # the file these settings came from
    credential: CredentialSettings = field(default_factory=CredentialSettings)
    machine_grants: tuple[MachineGrantSettings, ...] = ()
