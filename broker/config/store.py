"""``[store]``: where grants live: SQLite (``path``) or PostgreSQL (``dsn`` without a password,
``schema``), and where unwritable refresh results are sealed at shutdown (``emergency_dir``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from broker.config.section import Section
from broker.errors import ConfigError

StoreKind = Literal["sqlite", "postgres"]
_SCHEMA_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
)  # as broker.tokens.stores.postgres checks it


@dataclass(frozen=True)
class StoreSettings:
    """``[store]``: where grants live. ``path`` for SQLite, ``dsn`` (no password) for PostgreSQL;
    ``schema`` (PostgreSQL only) names the schema holding the grant tables, shared by every
    replica of one deployment."""

    kind: StoreKind = "sqlite"
    path: Path | None = None
    dsn: str | None = None
    schema: str = "broker"
    emergency_dir: Path | None = None
    """G04: where refresh results the store could not write are sealed at shutdown (and
    re-imported on start). SQLite default: ``emergency`` next to the database file; PostgreSQL
    has no default (without one such a result is lost at exit, logged CRITICAL)."""


def parse_store(section: Section) -> StoreSettings:
    kind: StoreKind = section.choice("kind", ("sqlite", "postgres"), "sqlite")
    path = section.path("path", must_exist=False)
    dsn = section.string("dsn")
    schema = section.string("schema")
    if schema is not None and not _SCHEMA_RE.match(schema):
        raise ConfigError(
            f"{section.key('schema')} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*, "
            "at most 63 characters)"
        )
    if kind == "sqlite":
        if path is None:
            raise ConfigError(f"{section.key('path')} is required when kind = 'sqlite'")
        if dsn is not None:
            raise ConfigError(f"{section.key('dsn')} is for kind = 'postgres' only")
        if schema is not None:
            raise ConfigError(f"{section.key('schema')} is for kind = 'postgres' only")
        if section.check_files and not path.parent.is_dir():
            raise ConfigError(f"{section.key('path')}: directory {path.parent} does not exist")
    else:
        if dsn is None:
            raise ConfigError(f"{section.key('dsn')} is required when kind = 'postgres'")
        if path is not None:
            raise ConfigError(f"{section.key('path')} is for kind = 'sqlite' only")
        _check_dsn(dsn, section.key("dsn"))
    emergency = section.path("emergency_dir", must_exist=False)
    if emergency is not None:
        if section.check_files and emergency.exists() and not emergency.is_dir():
            raise ConfigError(f"{section.key('emergency_dir')}: {emergency} is not a directory")
        if section.check_files and not emergency.exists() and not emergency.parent.is_dir():
            raise ConfigError(
                f"{section.key('emergency_dir')}: directory {emergency.parent} does not exist"
            )
        if path is not None and emergency in (path, path.parent):
            raise ConfigError(
                f"{section.key('emergency_dir')} must be its own directory, not the database "
                "file or its directory"
            )
    elif kind == "sqlite" and path is not None:
        emergency = path.parent / "emergency"
    return StoreSettings(
        kind=kind, path=path, dsn=dsn, schema=schema or "broker", emergency_dir=emergency
    )


def _check_dsn(dsn: str, key: str) -> None:
    """Refuse a password in a libpq DSN (URI or key=value form); use ``passfile=`` instead."""
    advice = (
        f"{key} must not contain a password: use passfile=/path (a file) or a client certificate"
    )
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"{key} must be a postgresql:// URI or key=value pairs")
        if parts.password is not None:
            raise ConfigError(advice)
        if any(k.lower() == "password" for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
            raise ConfigError(advice)
        return
    for item in dsn.split():
        name, eq, _ = item.partition("=")
        if not eq:
            raise ConfigError(f"{key} must be key=value pairs or a postgresql:// URI")
        if name.strip().lower() == "password":
            raise ConfigError(advice)
