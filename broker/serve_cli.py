"""``broker serve --config broker.toml``: run the gRPC and HTTPS listeners and the refresher."""

from __future__ import annotations

import argparse
import asyncio
import os

from broker.config import load_settings, resolve_config_path


def _serve(args: argparse.Namespace) -> int:
    # The service pulls in grpc, uvicorn and the stores: imported when `serve` runs, so the
    # ceremony commands start fast.
    from broker.service import serve_until_signalled  # noqa: PLC0415
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
