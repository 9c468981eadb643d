"""``broker doctor [--config FILE] [--json] [--cert-warn-days N]``: the pre-go-live check.

Prints one line per check (ok / warn / fail / skip and a reason) or, with ``--json``, one JSON
document (:func:`broker.doctor.result.to_json`). Exit status as ``broker serve`` for the same
failure: 0 when no check failed, 1 when any did, 2 for a usage error or a configuration that
serve would refuse. A configuration file that cannot be read or parsed at all is reported like
serve reports it (one line on stderr; a JSON error document with ``--json``): there is nothing
else to check.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys

from broker.config import resolve_config_path
from broker.doctor.result import DEFAULT_WARN_DAYS, exit_code, to_json, to_text

# The checks import httpx, the stores and the HSM library (not grpc: tests/doctor/
# test_doctor_imports.py): loaded when the command runs, so every other `broker` command starts
# fast.


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of days") from None
    if not math.isfinite(value) or not 0 <= value <= 3650:
        raise argparse.ArgumentTypeError("must be within [0, 3650] days")
    return value


def _doctor(args: argparse.Namespace) -> int:
    from broker.app.settings import load_settings  # noqa: PLC0415 - as serve: app is lazy
    from broker.doctor.runner import DoctorOptions, run_doctor  # noqa: PLC0415 - see above

    path = resolve_config_path(args.config, os.environ)
    load_settings(path, check_files=False)  # ConfigError: the one line and status 2, as serve
    options = DoctorOptions(cert_warn_days=args.cert_warn_days)
    results = asyncio.run(run_doctor(path, options=options))
    text = to_json(results, config=str(path)) if args.json else to_text(results)
    sys.stdout.write(text + "\n")
    return exit_code(results)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "doctor", help="check configuration, HSM, authorization server, TLS and store"
    )
    p.add_argument("--config", metavar="FILE", help="broker.toml (default: $BROKER_CONFIG)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--cert-warn-days",
        type=_days,
        default=DEFAULT_WARN_DAYS,
        metavar="N",
        help=f"warn when a certificate expires within N days (default {DEFAULT_WARN_DAYS:g})",
    )
    p.set_defaults(handler=_doctor, command="doctor")
