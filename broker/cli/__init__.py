"""The ``broker`` command: a thin dispatcher over command groups.

Each group lives in its own module and exposes ``register(subparsers)``, which adds its
sub-parser and sets ``handler`` (``Callable[[argparse.Namespace], int]``) and ``command`` (its
name for error lines) as defaults on every leaf. Groups: ``keys`` (key ceremonies,
:mod:`broker.cli.keys`), ``serve`` (:mod:`broker.cli.serve`), ``doctor``
(:mod:`broker.cli.doctor`). How a failure is reported (one stderr line, the ``--json`` error
document, the exit status) is :mod:`broker.cli.errors`; the parser is :mod:`broker.cli.parser`.

Importing this package must stay cheap and must not import grpc: ``broker serve`` quiets gRPC
C-core before grpc is first imported (:func:`broker.cli.serve.quiet_grpc_core`), so the service,
the doctor checks and the rotation wiring are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import sys
from collections.abc import Callable, Sequence
from typing import cast

from broker.cli import doctor, keys, serve
from broker.cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    error_line,
    exit_status,
    one_line,
    report,
    wants_json,
)
from broker.cli.parser import Parser
from broker.cli.rotation_wiring import rotation_deps

DISTRIBUTION = "dome-token-broker"
UNKNOWN_VERSION = "0+unknown"

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
GROUPS: tuple[Registrar, ...] = (
    functools.partial(keys.register, rotation=rotation_deps()),
    serve.register,
    doctor.register,
)


def distribution_version() -> str:
    """The installed version of the distribution; ``0+unknown`` only when it is not installed
    (e.g. run from a source tree through ``PYTHONPATH``)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def build_parser(groups: Sequence[Registrar] = GROUPS) -> argparse.ArgumentParser:
    parser = Parser(prog="broker", description="HSM-backed OAuth 2.1 / OIDC token broker")
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
        report(one_line(str(exc)), exc, as_json=wants_json(words))
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    handler: Callable[[argparse.Namespace], int] = args.handler
    command: str = args.command
    as_json = bool(getattr(args, "json", False))
    try:
        return handler(args)
    except KeyboardInterrupt as exc:
        report(f"broker {command}: interrupted", exc, as_json=as_json)
        return EXIT_INTERRUPTED
    except Exception as exc:
        report(error_line(command, exc), exc, as_json=as_json)
        return exit_status(exc)
