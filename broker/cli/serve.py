"""``broker serve --config broker.toml``: run the gRPC and HTTPS listeners and the refresher."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import MutableMapping

from broker.config import resolve_config_path

# gRPC C-core writes its own log lines (``I1206 04:02:22.25 ... Handshake failed ...``) straight
# to stderr, past Python logging: silenced unless the operator asks for them.
GRPC_CORE_LOG_DEFAULTS = {"GRPC_VERBOSITY": "NONE", "GRPC_TRACE": ""}


def quiet_grpc_core(environ: MutableMapping[str, str]) -> None:
    """Default ``GRPC_VERBOSITY=NONE`` and an empty ``GRPC_TRACE`` where unset, so the log
    stream stays one JSON object a line. C-core reads them once, when grpc is first imported:
    call before that. An operator who sets either (e.g. ``GRPC_VERBOSITY=ERROR`` to debug TLS
    handshakes) gets C-core's own, non-JSON, lines back."""
    for name, value in GRPC_CORE_LOG_DEFAULTS.items():
        environ.setdefault(name, value)


def _serve(args: argparse.Namespace) -> int:
    quiet_grpc_core(os.environ)  # before anything imports grpc (the OTLP exporters do)
    # The service pulls in grpc, uvicorn and the stores: imported when `serve` runs, so the
    # ceremony commands start fast.
    from broker.app.serve import serve_until_signalled  # noqa: PLC0415
    from broker.app.settings import load_settings  # noqa: PLC0415
    from broker.telemetry import build_providers, configure_logging, install_global  # noqa: PLC0415

    settings = load_settings(resolve_config_path(args.config, os.environ))
    telemetry = build_providers(settings.telemetry)
    install_global(telemetry)
    configure_logging(settings.telemetry)
    try:
        asyncio.run(serve_until_signalled(settings, metrics=telemetry.metrics))
    finally:
        telemetry.shutdown()
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("serve", help="run the broker (gRPC over mTLS, HTTPS listener)")
    p.add_argument("--config", metavar="FILE", help="broker.toml (default: $BROKER_CONFIG)")
    p.set_defaults(handler=_serve, command="serve")
