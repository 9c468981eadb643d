"""``broker doctor`` checks with serve's own rules but without serve's gRPC server: importing
its checks loads no grpc and not the wiring that starts the listeners. The doctor used to take
``client_config`` and ``http_client`` from the composition root (``broker.service``), which
imported the gRPC server, so every doctor run loaded grpc and C-core."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCTOR = ROOT / "broker" / "doctor"


def _loaded_after(imports: list[str]) -> list[str]:
    probe = (
        "import importlib, json, sys\n"
        f"for name in {imports!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = ('grpc', 'grpc_health', 'grpc_reflection', 'grpc_status', 'broker.server.app',\n"
        "         'broker.server.gen', 'broker.app.wiring', 'broker.app.grpc_server')\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if any(m == h or m.startswith(h + '.') for h in heavy))))\n"
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


def test_importing_every_doctor_check_loads_neither_grpc_nor_the_wiring() -> None:
    modules = sorted(f"broker.doctor.{p.stem}" for p in DOCTOR.glob("*.py") if p.stem != "__init__")
    assert "broker.doctor.runner" in modules and "broker.doctor.authserver" in modules
    assert _loaded_after(["broker.doctor", *modules]) == []
