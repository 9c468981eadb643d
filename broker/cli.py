"""The ``broker`` command: a thin dispatcher over command groups.

Each group lives in its own module and exposes ``register(subparsers)``, which adds its
sub-parser and sets ``handler`` (``Callable[[argparse.Namespace], int]``) and ``command`` (its
name for error lines) as defaults on every leaf. Groups today: ``keys`` (key ceremonies,
:mod:`broker.ceremony.commands`). ``serve``, ``doctor`` and ``token`` register the same way.

Exit status: 0 success, 2 usage (bad arguments, malformed key URI, missing or invalid
configuration), 1 operational failure; the same failure gives the same status in every command.
Every failure prints exactly ONE line on stderr, ``broker <command>: <what failed>: <why> [<reason
code>]``, built from the :mod:`broker.errors` class and its (secret-free) message; never a
traceback. With ``--json`` a failure also prints one JSON document on stdout,
``{"error": {"reason", "message", "retryable"}}``. A misspelt command or option is answered with
the closest known ones (``did you mean``).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib.metadata
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, cast

from broker import doctor, errors, serve_cli
from broker.ceremony import commands as ceremony_commands
from broker.ceremony import output
from broker.rotation_wiring import rotation_deps

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DISTRIBUTION = "dome-token-broker"
UNKNOWN_VERSION = "0+unknown"

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

    reason = "usage"
    retryable = False


def distribution_version() -> str:
    """The installed version of the distribution; ``0+unknown`` only when it is not installed
    (e.g. run from a source tree through ``PYTHONPATH``)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known words, or ``""``."""
    close = difflib.get_close_matches(word, sorted(set(known)), n=3, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


def _public_options(parser: argparse.ArgumentParser) -> list[str]:
    """The long options of ``parser`` shown in its help (the refusing ``--pin`` family is not
    suggested)."""
    return [
        option
        for action in parser._actions
        if action.help is not argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--")
    ]


def _leaf(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that was chosen, e.g. the one of ``keys show``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(parsed, action.dest, None)
            if chosen in action.choices:
                return _leaf(action.choices[chosen], parsed)
    return parser


class _Parser(argparse.ArgumentParser):
    """No abbreviations (``--pin`` must never mean ``--pin-file``), one-line errors, and unknown
    arguments named without their values (a mistyped option may be followed by a secret)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # A misspelt command: argparse 3.11 has no suggest_on_error.
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(repr(c) for c in action.choices)
            hint = did_you_mean(str(value), [str(c) for c in action.choices])
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{hint} (choose from {choices})"
            )

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self.prog == "broker":
            names = [a.split("=", 1)[0] for a in extras if a.startswith("-")]
            if not names:
                self.error(f"unrecognized arguments: {len(extras)} positional value(s)")
            known = _public_options(_leaf(self, parsed))
            shown = " ".join(name + did_you_mean(name, known) for name in names)
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


def _wants_json(argv: Sequence[str]) -> bool:
    """``--json`` among the options (before any ``--``), known before parsing succeeds."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in options


def _fail(line: str, exc: BaseException, *, as_json: bool) -> None:
    sys.stderr.write(line + "\n")
    if as_json and not output.was_reported(exc):
        sys.stdout.write(json.dumps(output.error_document(exc)) + "\n")


def build_parser(groups: Sequence[Registrar] = GROUPS) -> argparse.ArgumentParser:
    parser = _Parser(prog="broker", description="HSM-backed OAuth 2.1 / OIDC token broker")
    parser.add_argument("--version", action="version", version=f"broker {distribution_version()}")
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
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(words)
    except UsageError as exc:
        _fail(_one_line(str(exc)), exc, as_json=_wants_json(words))
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    handler: Callable[[argparse.Namespace], int] = args.handler
    command: str = args.command
    as_json = bool(getattr(args, "json", False))
    try:
        return handler(args)
    except KeyboardInterrupt as exc:
        _fail(f"broker {command}: interrupted", exc, as_json=as_json)
        return EXIT_INTERRUPTED
    except Exception as exc:
        _fail(error_line(command, exc), exc, as_json=as_json)
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
