"""Typed, strict access to one TOML table of the configuration file.

A :class:`Section` hands out each key's value with its exact type checked (``true`` is not a
number, ``"30"`` is not a number) and remembers which keys were read: :meth:`Section.finish`
rejects the others, so a typo never falls back to a default. Every :class:`ConfigError` names the
key by its path (``[oauth].issuer``) and never echoes a value that could be a secret.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from broker.errors import ConfigError

T = TypeVar("T")


class Section:
    """Typed access to one TOML table; remembers which keys were read, to reject the others."""

    def __init__(self, name: str, table: Mapping[str, Any], base_dir: Path, check_files: bool):
        self.name = name
        self._table = table
        self._seen: set[str] = set()
        self.base_dir = base_dir
        self.check_files = check_files

    def key(self, key: str) -> str:
        return f"[{self.name}].{key}"

    def has(self, key: str) -> bool:
        return key in self._table

    def raw(self, key: str, required: bool) -> Any:
        """The value of ``key`` as TOML gave it (None when absent and not required)."""
        self._seen.add(key)
        if key not in self._table:
            if required:
                raise ConfigError(f"{self.key(key)} is required")
            return None
        return self._table[key]

    def string(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.raw(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.key(key)} must be a string, not {toml_type(value)}")
        if not value or value != value.strip():
            raise ConfigError(f"{self.key(key)} must be non-empty without surrounding spaces")
        return value

    def req_string(self, key: str) -> str:
        value = self.string(key, required=True)
        assert value is not None
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(key)} must be true or false, not {toml_type(value)}")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self.raw(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(key)} must be an integer, not {toml_type(value)}")
        if not low <= value <= high:
            raise ConfigError(f"{self.key(key)} must be within [{low}, {high}], got {value}")
        return value

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        """Seconds and the like: an integer or a float within ``[low, high]``."""
        value = self.raw(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.key(key)} must be a number, not {toml_type(value)}")
        number = float(value)
        if not math.isfinite(number) or not low <= number <= high:
            raise ConfigError(f"{self.key(key)} must be within [{low:g}, {high:g}], got {value}")
        return number

    def choice(self, key: str, options: tuple[T, ...], default: T) -> T:
        value = self.raw(key, False)
        if value is None:
            return default
        if value not in options:
            shown = ", ".join(repr(o) for o in options)
            raise ConfigError(f"{self.key(key)} must be one of {shown}")
        return cast(T, value)

    def path(self, key: str, *, required: bool = False, must_exist: bool = True) -> Path | None:
        value = self.string(key, required=required)
        if value is None:
            return None
        return resolve_file(value, self.key(key), self.base_dir, self.check_files and must_exist)

    def req_path(self, key: str) -> Path:
        value = self.path(key, required=True)
        assert value is not None
        return value

    def finish(self) -> None:
        unknown = sorted(set(self._table) - self._seen)
        if unknown:
            raise ConfigError(f"unknown key {self.key(unknown[0])}")


def toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date/time"


def resolve_file(value: str, key: str, base_dir: Path, must_exist: bool) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if must_exist and not path.is_file():
        raise ConfigError(f"{key}: file {path} does not exist or is not a regular file")
    return path
