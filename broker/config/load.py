"""Loading the broker's :class:`Settings`, once, in ``main``, from one TOML file.

``load_settings(path)`` reads the file with :mod:`tomllib` and validates every key; every problem
raises :class:`broker.errors.ConfigError` whose message names the offending key (``[oauth].issuer``)
and never echoes a value that could be a secret. Rules:

* unknown sections and keys are rejected (a typo must not silently fall back to a default);
* values have exact types (``true`` is not a number, ``"30"`` is not a number);
* URLs the broker trusts or publishes must be ``https`` unless ``[oauth] allow_insecure_http``
  is ``true`` (tests only); the issuer is kept byte-for-byte (discovery compares it exactly);
* secrets are only ever *paths to files*: the key URI carries ``pin-source=file:...`` and a
  ``pin-value`` attribute is rejected; a PostgreSQL DSN with a password is rejected (use
  ``passfile=``); relative paths are resolved against the configuration file's directory;
* files the broker must read at start-up (TLS material, CA bundles, policy, PIN file) must exist
  when ``check_files`` is true (the default).

Only the path of the file may come from the environment (``BROKER_CONFIG``): see
:func:`resolve_config_path`. There is no module-level state. Each section is validated by its
own module (``key``, ``oauth``, ``web``, ``grpc``, ``store``, ``tokens``, ``telemetry``,
``audit``, ``machine``), over a strict table reader (:class:`broker.config.section.Section`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.config.audit import parse_audit
from broker.config.grpc import parse_grpc
from broker.config.key import parse_key
from broker.config.machine import parse_credential, parse_machine_grants
from broker.config.oauth import parse_oauth
from broker.config.ports import KeyChecks
from broker.config.section import Section
from broker.config.settings import Settings
from broker.config.store import parse_store
from broker.config.telemetry import parse_telemetry
from broker.config.tokens import parse_tokens
from broker.config.web import parse_web
from broker.errors import ConfigError

CONFIG_ENV = "BROKER_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/broker/broker.toml")

_REQUIRED = ("key", "oauth", "web", "grpc", "store")
_OPTIONAL = ("tokens", "telemetry", "audit", "credential")


def parse_settings(
    document: Mapping[str, Any],
    *,
    key_checks: KeyChecks,
    base_dir: Path,
    source: Path,
    check_files: bool = True,
) -> Settings:
    """Validate an already-parsed TOML document (see :func:`load_settings`)."""
    for name, table in document.items():
        if name == "machine_grants":
            continue
        if name not in _REQUIRED + _OPTIONAL:
            raise ConfigError(f"unknown section [{name}]")
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
    sections: dict[str, Section] = {}
    for name in _REQUIRED + _OPTIONAL:
        table = document.get(name)
        if table is None:
            if name in _REQUIRED:
                raise ConfigError(f"section [{name}] is required")
            table = {}
        sections[name] = Section(name, table, base_dir, check_files)

    oauth = parse_oauth(sections["oauth"], key_checks)
    settings = Settings(
        key=parse_key(sections["key"], key_checks),
        oauth=oauth,
        web=parse_web(sections["web"], oauth),
        grpc=parse_grpc(sections["grpc"]),
        store=parse_store(sections["store"]),
        tokens=parse_tokens(sections["tokens"]),
        telemetry=parse_telemetry(sections["telemetry"]),
        audit=parse_audit(sections["audit"]),
        source=source,
        credential=parse_credential(sections["credential"]),
        machine_grants=parse_machine_grants(document.get("machine_grants"), base_dir),
    )
    for section in sections.values():
        section.finish()
    return settings


def load_settings(path: str | Path, *, key_checks: KeyChecks, check_files: bool = True) -> Settings:
    """Read and validate the TOML file at ``path``. Raises :class:`ConfigError`.

    ``key_checks`` are the key custody checks of ``[key]`` and ``[oauth]``: serve, doctor and the
    CLI load through :func:`broker.app.settings.load_settings`, which passes the keys package's."""
    source = Path(path).expanduser().absolute()
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {source}: {exc.strerror}") from exc
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {source} is not UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names line and column, not the value.
        raise ConfigError(f"configuration file {source} is not valid TOML: {exc}") from exc
    return parse_settings(
        document,
        key_checks=key_checks,
        base_dir=source.parent,
        source=source,
        check_files=check_files,
    )


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """The configuration file: ``--config`` if given, else ``$BROKER_CONFIG``, else the default.

    This is the only setting the environment may override.
    """
    if cli_value:
        return Path(cli_value)
    from_env = environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_PATH
