"""Where the machine credential is kept: one file holding the compact JWT and a newline.

The file is ``[credential] path`` in broker.toml, else ``lear-credential-machine.jwt`` next to
the audit log (the ceremonies' ``--audit-log`` / ``[audit] path``). A credential is not secret
(the Verifier sees it in every VP): mode 0644. Writes are atomic (a temporary file in the same
directory, ``fsync``, ``rename``, ``fsync`` of the directory): a reader sees the old credential
or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from broker.credentials.lear import MAX_JWT_BYTES, LearCredentialMachine, parse_credential
from broker.errors import CredentialError

CREDENTIAL_FILE = "lear-credential-machine.jwt"
FILE_MODE = 0o644


def credential_path(
    configured: str | os.PathLike[str] | None, audit_log: str | os.PathLike[str] | None
) -> Path | None:
    """``configured`` when set, else :data:`CREDENTIAL_FILE` in the audit log's directory;
    ``None`` when neither is known (no machine credential)."""
    if configured is not None:
        return Path(configured)
    if audit_log is not None:
        return Path(os.path.abspath(audit_log)).parent / CREDENTIAL_FILE
    return None


def load_credential(path: str | os.PathLike[str]) -> LearCredentialMachine:
    """Read and parse the stored credential (structure only: verify it for its use).

    :class:`CredentialError` with reason ``missing`` when there is none, ``unreadable``,
    or the reasons of :func:`parse_credential`."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JWT_BYTES + 2)
    except FileNotFoundError:
        raise CredentialError(
            f"no machine credential at {path}: import one with 'broker keys credential import'",
            reason="missing",
        ) from None
    except OSError as exc:
        raise CredentialError(
            f"cannot read the machine credential {path}: {exc.strerror}", reason="unreadable"
        ) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CredentialError(
            f"the machine credential file {path} is not a compact JWT (not ASCII)",
            reason="malformed",
        ) from None
    return parse_credential(text)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_credential(path: str | os.PathLike[str], cred: LearCredentialMachine) -> None:
    """Write ``cred`` to ``path`` atomically (replacing any file there), mode 0644."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    data = (cred.jwt + "\n").encode("ascii")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CredentialError(
            f"cannot write the machine credential {target}: {exc.strerror}", reason="unwritable"
        ) from None


def remove_credential(path: str | os.PathLike[str]) -> bool:
    """Delete the stored credential; ``False`` when there was none."""
    target = Path(path)
    try:
        target.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CredentialError(
            f"cannot remove the machine credential {target}: {exc.strerror}", reason="unwritable"
        ) from None
    _fsync_dir(target.parent)
    return True
