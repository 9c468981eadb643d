"""The ``broker`` command: a thin dispatcher over command groups.

Each group lives in its own module and exposes ``register(subparsers)``, which adds its
sub-parser and sets ``handler`` (``Callable[[argparse.Namespace], int]``) and ``command`` (its
name for error lines) as defaults on every leaf. Groups today: ``keys`` (key ceremonies,
:mod:`broker.ceremony.commands`). ``serve``, ``doctor`` and ``token`` register the same way.

Exit status: 0 success, 2 usage (bad arguments, malformed key URI, missing configuration), 1
operational failure. Every failure prints exactly ONE line on stderr, ``broker <command>: <what
failed>: <why> [<reason code>]``, built from the :mod:`broker.errors` class and its (secret-free)
message; never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, cast

from broker import doctor, errors, serve_cli
from broker.ceremony import commands as ceremony_commands
from broker.rotation_wiring import rotation_deps

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
GROUPS: tuple[Registrar, ...] = (
    functools.partial(ceremony_commands.register, rotation=rotation_deps()),
    serve_cli.register,
    doctor.register,
)

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


class UsageError(Exception):
    """Raised instead of argparse's print-usage-and-exit, so usage errors are one line too."""


class _Parser(argparse.ArgumentParser):
    """No abbreviations (``--pin`` must never mean ``--pin-file``), one-line errors, and unknown
    arguments named without their values (a mistyped option may be followed by a secret)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self.prog == "broker":
            names = [a.split("=", 1)[0] for a in extras if a.startswith("-")]
            shown = " ".join(names) if names else f"{len(extras)} positional value(s)"
            self.error(f"unrecognized arguments: {shown} (values not repeated)")
        return parsed, extras


def _one_line(text: str) -> str:
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
        return _one_line(f"broker {command}: {what}: {exc.message} [{exc.reason}]")
    return f"broker {command}: internal error ({type(exc).__name__}) [internal]"


def build_parser(groups: Sequence[Registrar] = GROUPS) -> argparse.ArgumentParser:
    parser = _Parser(prog="broker", description="HSM-backed OAuth 2.1 / OIDC token broker")
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="group", metavar="GROUP", required=True),
    )
    for register in groups:
        register(sub)
    return parser


def main(argv: list[str] | None = None, *, groups: Sequence[Registrar] = GROUPS) -> int:
    """Entry point of the ``broker`` console script; returns the exit status."""
    parser = build_parser(groups)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(_one_line(str(exc)) + "\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    handler: Callable[[argparse.Namespace], int] = args.handler
    command: str = args.command
    try:
        return handler(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"broker {command}: interrupted\n")
        return 130
    except Exception as exc:
        sys.stderr.write(error_line(command, exc) + "\n")
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
