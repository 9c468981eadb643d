"""The ``broker`` argument parser: argparse without abbreviations, failing in one line.

``--pin`` must never mean ``--pin-file``, so no option is abbreviated. A parse failure raises
:class:`broker.cli.errors.UsageError` instead of printing usage and exiting; a misspelt command
or option is answered with the closest known ones, and unknown arguments are named without
their values (a mistyped option may be followed by a secret).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from broker.cli.errors import UsageError, did_you_mean


def public_options(parser: argparse.ArgumentParser) -> list[str]:
    """The long options of ``parser`` shown in its help (the refusing ``--pin`` family is not
    suggested)."""
    return [
        option
        for action in parser._actions
        if action.help is not argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--")
    ]


def chosen_leaf(
    parser: argparse.ArgumentParser, parsed: argparse.Namespace
) -> argparse.ArgumentParser:
    """The (sub)parser of the command that was chosen, e.g. the one of ``keys show``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(parsed, action.dest, None)
            if chosen in action.choices:
                return chosen_leaf(action.choices[chosen], parsed)
    return parser


class Parser(argparse.ArgumentParser):
    """No abbreviations, one-line errors, did-you-mean, unknown arguments without values."""

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
            known = public_options(chosen_leaf(self, parsed))
            shown = " ".join(name + did_you_mean(name, known) for name in names)
            self.error(f"unrecognized arguments: {shown} (values not repeated)")
        return parsed, extras
