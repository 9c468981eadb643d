"""How the ``broker`` command reports a failure: one line, a JSON document, an exit status.

Exit status: 0 success, 2 usage (bad arguments, malformed key URI, missing or invalid
configuration), 1 operational failure, 130 interrupted; the same failure gives the same status in
every command. Every failure prints exactly ONE line on stderr, ``broker <command>: <what
failed>: <why> [<reason code>]``, built from the :mod:`broker.errors` class and its
(secret-free) message; never a traceback. With ``--json`` a failure also prints one JSON
document on stdout, ``{"error": {"reason", "message", "retryable"}}``, unless the command
already put that member into its own document (:func:`mark_reported`). A misspelt command or
option is answered with the closest known ones (:func:`did_you_mean`).
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from broker import errors

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Most specific first: the first class that matches names what failed.
_WHAT_FAILED: tuple[tuple[type[errors.BrokerError], str], ...] = (
    (errors.InvalidKeyUri, "malformed key URI"),
    (errors.InsecurePinFile, "insecure PIN file"),
    (errors.OrphanKey, "orphan key"),
    (errors.PinIncorrect, "login refused: wrong PIN"),
    (errors.PinLocked, "login refused: the PIN is locked"),
    (errors.TokenNotPresent, "token not found"),
    (errors.KeyNotFound, "key not found"),
    (errors.KeyExists, "key already exists"),
    (errors.InvalidKey, "unusable key"),
    (errors.SelfTestFailed, "self-test failed"),
    (errors.HsmUnavailable, "HSM unavailable"),
    (errors.KeyStoreError, "key store error"),
    (errors.DidError, "invalid did:key"),
    (errors.ConfirmationMismatch, "not confirmed"),
    (errors.AuditError, "audit log"),
    (errors.ConfigError, "configuration"),
    (errors.InvalidArgument, "invalid argument"),
    (errors.BrokerError, "failed"),
)

_REPORTED = "_broker_json_reported"


class UsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit, so usage errors are one line too."""

    reason = "usage"
    retryable = False


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known words, or ``""``."""
    close = difflib.get_close_matches(word, sorted(set(known)), n=3, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


def one_line(text: str) -> str:
    return " ".join(text.split())


def exit_status(exc: BaseException) -> int:
    """2 for caller mistakes (usage, bad arguments, configuration), else 1."""
    if isinstance(exc, UsageError | errors.InvalidArgument | errors.ConfigError):
        return EXIT_USAGE
    return EXIT_FAILURE


def error_line(command: str, exc: BaseException) -> str:
    """The single stderr line for a failure. Broker messages are secret-free by contract;
    anything else (a bug) is named by its type only, since its text may hold anything."""
    if isinstance(exc, errors.BrokerError):
        what = next(label for cls, label in _WHAT_FAILED if isinstance(exc, cls))
        return one_line(f"broker {command}: {what}: {exc.message} [{exc.reason}]")
    return f"broker {command}: internal error ({type(exc).__name__}) [internal]"


def error_document(exc: BaseException) -> dict[str, Any]:
    """``{"error": {"reason", "message", "retryable"}}`` for a failure, as secret-free as its
    stderr line: a broker error by its reason and message, anything else by its type only."""
    if isinstance(exc, errors.BrokerError):
        reason, retryable, message = exc.reason, exc.retryable, exc.message
    elif isinstance(exc, KeyboardInterrupt):
        reason, retryable, message = "interrupted", True, "interrupted"
    else:
        reason = str(getattr(exc, "reason", "internal"))
        retryable = bool(getattr(exc, "retryable", False))
        message = str(exc) if reason != "internal" else f"internal error ({type(exc).__name__})"
    return {"error": {"reason": reason, "message": one_line(message), "retryable": retryable}}


def mark_reported(exc: BaseException) -> None:
    """The command's own JSON document already carries ``exc``'s error member."""
    setattr(exc, _REPORTED, True)


def was_reported(exc: BaseException) -> bool:
    return bool(getattr(exc, _REPORTED, False))


def wants_json(argv: Sequence[str]) -> bool:
    """``--json`` among the options (before any ``--``), known before parsing succeeds."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in options


def report(line: str, exc: BaseException, *, as_json: bool) -> None:
    """Print the failure: ``line`` on stderr and, with ``--json``, the error document."""
    sys.stderr.write(line + "\n")
    if as_json and not was_reported(exc):
        sys.stdout.write(json.dumps(error_document(exc)) + "\n")
