"""The broker's settings: frozen dataclasses loaded once, in ``main``, from one TOML file.

One module per concept: :mod:`~broker.config.load` (read the file, the sections, the config path),
:mod:`~broker.config.section` (strict typed access to one TOML table), and one module per section
(``key``, ``oauth``, ``web``, ``grpc``, ``store``, ``tokens``, ``telemetry``, ``audit``,
``machine``) holding its frozen dataclass and its validation, and :mod:`~broker.config.ports`
(the key custody checks the loader is given). The names below are the package's
public surface; import them from ``broker.config``.
"""

from broker.config.audit import AuditSettings
from broker.config.grpc import GrpcSettings
from broker.config.key import MIN_SIGN_TIMEOUT, KeySettings
from broker.config.load import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    load_settings,
    parse_settings,
    resolve_config_path,
)
from broker.config.machine import CredentialSettings, MachineGrantSettings
from broker.config.oauth import KID_FORMATS, MAX_CLOCK_SKEW, KidFormatName, OAuthSettings
from broker.config.ports import KeyChecks
from broker.config.settings import Settings
from broker.config.store import StoreKind, StoreSettings
from broker.config.tokens import TokenSettings
from broker.config.web import WebSettings
from broker.telemetry.settings import TelemetrySettings

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "KID_FORMATS",
    "MAX_CLOCK_SKEW",
    "MIN_SIGN_TIMEOUT",
    "AuditSettings",
    "CredentialSettings",
    "GrpcSettings",
    "KeyChecks",
    "KeySettings",
    "KidFormatName",
    "MachineGrantSettings",
    "OAuthSettings",
    "Settings",
    "StoreKind",
    "StoreSettings",
    "TelemetrySettings",
    "TokenSettings",
    "WebSettings",
    "load_settings",
    "parse_settings",
    "resolve_config_path",
]
