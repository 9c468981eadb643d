"""Where the machine credential is kept: one file holding the compact JWT.

Skeleton: filled in by the next commit.
"""

from __future__ import annotations

import os

from broker.credentials.lear import LearCredentialMachine, parse_credential

CREDENTIAL_FILE = "lear-credential-machine.jwt"


def default_credential_path(audit_log: str | os.PathLike[str]) -> str:
    """Next to the audit log."""
    return os.path.join(os.path.dirname(os.path.abspath(audit_log)), CREDENTIAL_FILE)


def load_credential(path: str | os.PathLike[str]) -> LearCredentialMachine:
    with open(path, encoding="ascii") as fh:
        return parse_credential(fh.read().strip())


def save_credential(path: str | os.PathLike[str], cred: LearCredentialMachine) -> None:
    raise NotImplementedError


def remove_credential(path: str | os.PathLike[str]) -> bool:
    raise NotImplementedError
