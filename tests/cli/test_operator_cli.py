"""The operator path of the ``broker`` command: ``--version``, "did you mean", the ``--json``
error document, and ``keys tsl-entry --wrap``."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from broker import cli, errors
from broker.ceremony import tsl
from broker.cli import main
from tests.conftest import ROOT

DID = "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY"


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "BROKER_CONFIG"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *argv],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,  # not the source tree: a stale *.egg-info there would be found first
        timeout=120,
        check=False,
    )


# --- --version ----------------------------------------------------------------------------------


def test_version_comes_from_the_installed_distribution(tmp_path: Path) -> None:
    """A dist-info of ``dome-token-broker`` ahead on the path is what ``--version`` reports."""
    info = tmp_path / "dome_token_broker-9.8.7.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: dome-token-broker\nVersion: 9.8.7\n", encoding="utf-8"
    )
    path = os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])
    proc = _run(["--version"], tmp_path, PYTHONPATH=path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "broker 9.8.7\n", "")


def test_version_falls_back_only_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cli.distribution_version() == "0+unknown"
    monkeypatch.setattr(importlib.metadata, "version", lambda name: f"1.2.3 of {name}")
    assert cli.distribution_version() == "1.2.3 of dome-token-broker"


# --- did you mean -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["serv"], "did you mean 'serve'?"),
        (["docter"], "did you mean 'doctor'?"),
        (["keys", "shwo"], "did you mean 'show'?"),
        (["keys", "tsl-entri"], "did you mean 'tsl-entry'?"),
        (["keys", "show", "--jsn"], "--jsn (did you mean '--json'?)"),
        (["doctor", "--cert-warn-day", "3"], "did you mean '--cert-warn-days'?"),
        (["keys", "show", "--pin-fil=4711"], "--pin-fil (did you mean '--pin-file'?)"),
        (["serve", "--confg", "x.toml"], "did you mean '--config'?"),
        (["keys", "show", "--zzzzzz"], None),
        (["frobnicate"], None),
    ],
)
def test_misspelt_commands_and_options_get_a_suggestion(
    argv: list[str], suggestion: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    if suggestion is None:
        assert "did you mean" not in err
    else:
        assert suggestion in err
    assert "4711" not in err  # a value after a mistyped option is never repeated


def test_the_refusing_pin_options_are_never_suggested(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "show", "--pinn"]) == 2
    assert "'--pin'" not in capsys.readouterr().err


# --- the --json error document ------------------------------------------------------------------


def _group_raising(exc: BaseException) -> Callable[..., None]:
    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser("boom")
        parser.add_argument("--json", action="store_true")

        def handler(_args: argparse.Namespace) -> int:
            raise exc

        parser.set_defaults(handler=handler, command="boom")

    return register


@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [
        (
            errors.TokenNotPresent("no token 'x'"),
            1,
            {"reason": "token_not_present", "message": "no token 'x'", "retryable": True},
        ),
        (
            errors.ConfigError("cannot read configuration file /x"),
            2,
            {
                "reason": "config",
                "message": "cannot read configuration file /x",
                "retryable": False,
            },
        ),
        (
            errors.KeyStoreError("two\nlines"),
            1,
            {"reason": "keystore", "message": "two lines", "retryable": False},
        ),
        (
            ValueError("pin=4711"),
            1,
            {"reason": "internal", "message": "internal error (ValueError)", "retryable": False},
        ),
        (
            KeyboardInterrupt(),
            130,
            {"reason": "interrupted", "message": "interrupted", "retryable": True},
        ),
    ],
)
def test_json_failures_print_an_error_document_and_the_stderr_line(
    exc: BaseException,
    status: int,
    error: dict[str, object],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["boom", "--json"], groups=[_group_raising(exc)]) == status
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": error}
    assert err.startswith("broker boom: ") and err.count("\n") == 1
    assert "4711" not in out + err
    # Without --json: the stderr line only.
    assert main(["boom"], groups=[_group_raising(exc)]) == status
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "show", "--json", "--jsn"],
        ["doctr", "--json"],
        ["doctor", "--json", "--cert-warn-days", "soon"],
    ],
)
def test_json_usage_errors_print_an_error_document(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["error"]["reason"] == "usage" and doc["error"]["retryable"] is False
    assert doc["error"]["message"] == err.strip()


def test_json_after_double_dash_is_a_value_not_the_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["doctr", "--", "--json"]) == 2
    assert capsys.readouterr().out == ""


# --- tsl-entry --wrap ---------------------------------------------------------------------------


def test_wrapped_entry_is_a_trust_framework_clients_list() -> None:
    entry = tsl.build_entry(
        did=DID,
        issuer="https://verifier.dome-marketplace.eu",
        url="https://broker.example.org",
        redirect_uris=["https://broker.example.org/callback"],
    )
    text = tsl.render_yaml(entry, wrap=True)
    assert text.startswith("clients:\n  - clientId: ")
    assert yaml.safe_load(text) == {"clients": [entry]} == tsl.wrapped(entry)
    # Unwrapped stays one list item, byte for byte the profile's layout.
    assert tsl.render_yaml(entry).startswith("- clientId: ")
    indented = "".join("  " + line + "\n" for line in tsl.render_yaml(entry).splitlines())
    assert text == "clients:\n" + indented
