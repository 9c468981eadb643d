"""The ``broker`` command as a package (issue 11): ``broker.cli`` is the one command tree.

Importing it must not import grpc or the composition root: ``broker serve`` quiets gRPC C-core
(``GRPC_VERBOSITY``) before grpc is first imported, and C-core reads the variable only then. When
the rotation wiring imported :mod:`broker.service` (now :mod:`broker.app`) with the CLI,
``broker serve`` wrote C-core's own ``I1206 ... Handshake failed`` lines into the JSON log
stream.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _loaded_after(code: str) -> list[str]:
    probe = (
        "import json, sys\n"
        f"{code}\n"
        "heavy = ('grpc', 'broker.app', 'broker.server', 'uvicorn')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "    or any(m == h or m.startswith(h + '.') for h in heavy))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    loaded: list[str] = json.loads(proc.stdout)
    return loaded


def test_importing_the_cli_imports_neither_grpc_nor_the_service() -> None:
    assert _loaded_after("import broker.cli") == []


def test_building_the_parser_imports_neither_grpc_nor_the_service() -> None:
    """Every group registers (keys with its rotate steps, serve, doctor) without the service:
    it is imported when a command that needs it runs."""
    code = (
        "from broker.cli import build_parser\n"
        "parser = build_parser()\n"
        "parser.parse_args(['keys', 'rotate', 'status', '--config', 'x.toml'])"
    )
    assert _loaded_after(code) == []
