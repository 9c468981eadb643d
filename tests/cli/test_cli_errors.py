"""The entry point's failure policy: one stderr line per error class, exit 2 usage / 1 operational."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from broker import errors
from broker.cli import main
from broker.cli.errors import error_line, exit_status


@pytest.mark.parametrize(
    ("exc", "what", "status"),
    [
        (errors.InvalidKeyUri("bad part"), "malformed key URI", 2),
        (errors.PinIncorrect("refused"), "login refused: wrong PIN", 1),
        (errors.PinLocked("locked"), "login refused: the PIN is locked", 1),
        (errors.TokenNotPresent("no token"), "token not found", 1),
        (errors.KeyNotFound("no key"), "key not found", 1),
        (errors.KeyExists("exists"), "key already exists", 1),
        (errors.InvalidKey("bad key"), "unusable key", 1),
        (errors.SelfTestFailed("mismatch"), "self-test failed", 1),
        (errors.HsmUnavailable("gone"), "HSM unavailable", 1),
        (errors.KeyStoreError("other"), "key store error", 1),
        (errors.DidError("bad did"), "invalid did:key", 2),
        (errors.ConfirmationMismatch("typed other"), "not confirmed", 1),
        (errors.AuditError("cannot write"), "audit log", 1),
        (errors.ConfigError("no pin file"), "configuration", 2),
        (errors.InvalidArgument("bad url"), "invalid argument", 2),
        (errors.StoreError("db down"), "failed", 1),
    ],
)
def test_error_line_and_exit_status(exc: errors.BrokerError, what: str, status: int) -> None:
    line = error_line("keys show", exc)
    assert line == f"broker keys show: {what}: {exc.message} [{exc.reason}]"
    assert exit_status(exc) == status


def test_multiline_messages_become_one_line() -> None:
    line = error_line("keys show", errors.KeyStoreError("first\nsecond\r\nthird"))
    assert "\n" not in line and "\r" not in line and "first second third" in line


def _group_raising(exc: BaseException) -> Callable[..., None]:
    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser("boom")

        def handler(_args: argparse.Namespace) -> int:
            raise exc

        parser.set_defaults(handler=handler, command="boom")

    return register


def test_unexpected_exceptions_print_their_type_only(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["boom"], groups=[_group_raising(ValueError("pin=4711 leaked"))])
    err = capsys.readouterr().err
    assert code == 1
    assert err == "broker boom: internal error (ValueError) [internal]\n"


def test_keyboard_interrupt_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boom"], groups=[_group_raising(KeyboardInterrupt())]) == 130
    assert capsys.readouterr().err == "broker boom: interrupted\n"
