"""``[audit]``: the append-only, hash-chained audit log and its optional mirror."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from broker.config.section import Section
from broker.errors import ConfigError


@dataclass(frozen=True)
class AuditSettings:
    """``[audit]``: the append-only, hash-chained audit log (JSON lines). None: audit events go
    to the ``broker.audit`` logger.

    ``path`` is the same file the key ceremonies write (one chain, one hash to anchor); the
    service's events use their own action namespace (``grant.*``, ``token.*``, ``login.*``,
    ``caller.*``; ceremonies: ``keys.*``). ``mirror_path``: a second log written in parallel;
    ``require`` says whether a record must reach ``"all"`` logs or ``"any"`` one of them.
    ``write_timeout``: seconds a record may take before it counts as failed (H01).
    """

    path: Path | None = None
    mirror_path: Path | None = None
    require: Literal["all", "any"] = "all"
    write_timeout: float = 2.0


def parse_audit(section: Section) -> AuditSettings:
    path = section.path("path", must_exist=False)
    mirror = section.path("mirror_path", must_exist=False)
    for key, value in (("path", path), ("mirror_path", mirror)):
        if value is not None and section.check_files and not value.parent.is_dir():
            raise ConfigError(f"{section.key(key)}: directory {value.parent} does not exist")
    if mirror is not None and path is None:
        raise ConfigError(f"{section.key('mirror_path')} needs {section.key('path')}")
    if mirror is not None and mirror == path:
        raise ConfigError(f"{section.key('mirror_path')} must differ from {section.key('path')}")
    require: Literal["all", "any"] = section.choice("require", ("all", "any"), "all")
    timeout = section.number("write_timeout", 2.0, low=0.05, high=60.0)
    return AuditSettings(path=path, mirror_path=mirror, require=require, write_timeout=timeout)
