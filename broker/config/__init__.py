"""The broker's settings (transitional: everything still lives in :mod:`broker.config.load`)."""

from broker.config.load import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    AuditSettings,
    CredentialSettings,
    GrpcSettings,
    KeySettings,
    MachineGrantSettings,
    OAuthSettings,
    Settings,
    StoreSettings,
    TokenSettings,
    WebSettings,
    load_settings,
    parse_settings,
    resolve_config_path,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "AuditSettings",
    "CredentialSettings",
    "GrpcSettings",
    "KeySettings",
    "MachineGrantSettings",
    "OAuthSettings",
    "Settings",
    "StoreSettings",
    "TokenSettings",
    "WebSettings",
    "load_settings",
    "parse_settings",
    "resolve_config_path",
]
