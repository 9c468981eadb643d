"""``[credential]`` (the LEARCredentialMachine file) and ``[[machine_grants]]`` (the
machine-to-machine grants presenting it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.config.section import Section
from broker.errors import ConfigError


@dataclass(frozen=True)
class CredentialSettings:
    """``[credential]``: the LEARCredentialMachine (``broker keys credential import``).

    ``path``: the file holding it; default ``lear-credential-machine.jwt`` next to the audit
    log (see :func:`broker.credentials.store.credential_path`). None and no audit log: the
    broker has no machine credential."""

    path: Path | None = None


@dataclass(frozen=True)
class MachineGrantSettings:
    """One ``[[machine_grants]]`` entry: a machine-to-machine grant (client credentials with the
    ``[credential]`` LEARCredentialMachine) that callers reach by ``label`` like a user grant."""

    label: str
    scope: str = "machine learcredential"


def parse_credential(section: Section) -> CredentialSettings:
    path = section.path("path", must_exist=False)
    if path is not None and section.check_files and not path.parent.is_dir():
        raise ConfigError(f"{section.key('path')}: directory {path.parent} does not exist")
    return CredentialSettings(path=path)


def parse_machine_grants(value: object, base_dir: Path) -> tuple[MachineGrantSettings, ...]:
    """``[[machine_grants]]``: an array of tables, labels unique."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("machine_grants must be an array of tables ([[machine_grants]])")
    grants: list[MachineGrantSettings] = []
    for index, table in enumerate(value):
        if not isinstance(table, dict):
            raise ConfigError("machine_grants must be an array of tables ([[machine_grants]])")
        section = Section(f"machine_grants[{index}]", table, base_dir, False)
        label = section.req_string("label")
        scope = section.string("scope", default="machine learcredential")
        assert scope is not None
        section.finish()
        if any(g.label == label for g in grants):
            raise ConfigError(f"[[machine_grants]] label {label!r} is listed twice")
        grants.append(MachineGrantSettings(label=label, scope=scope))
    return tuple(grants)
