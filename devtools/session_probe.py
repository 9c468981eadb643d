"""``python -m devtools.session_probe serve --config FILE``: ``broker serve`` unchanged, plus
a daemon thread that writes the process's open PKCS#11 session count to a file.

PKCS#11 sessions live inside the process that opened them (SoftHSM is a library), so nobody
outside the serve process can count them. This wrapper runs the same ``broker.cli`` main in the
same process and, every ``BROKER_SESSION_PROBE_INTERVAL`` seconds (default 2), writes one JSON
line ``{"at": <epoch s>, "sessions": N}`` to the file named by ``BROKER_SESSION_PROBE`` (the
whole file is replaced, atomically). N is the sum over every loaded module of
``C_GetSessionInfo`` over handles ``1..PROBE_HANDLES`` (as :meth:`Pkcs11KeyStore.count_open_sessions`
does, taken under the module lock); null when a module cannot be probed. A bench and leak
tests only: never part of a deployment.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _library_cache() -> dict[str, Any]:
    """The process-wide PKCS#11 library cache (``broker.keys.pkcs11.lib``, formerly
    ``broker.keys.pkcs11_lib``)."""
    for name in ("broker.keys.pkcs11.lib", "broker.keys.pkcs11_lib"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        cache: dict[str, Any] = module._CACHE
        return cache
    raise RuntimeError("no PKCS#11 library cache found")


PROBE_HANDLES = 512
"""SoftHSM hands out small session handles and reuses freed ones: far more than a broker opens."""


def count_sessions() -> int | None:
    """Open sessions of this process over every loaded PKCS#11 module (None: not measurable)."""
    total = 0
    for loaded in list(_library_cache().values()):
        with loaded.lock:
            count = loaded.count_open_sessions(PROBE_HANDLES)
        if count is None:
            return None
        total += count
    return total


def write_count(path: Path) -> None:
    line = json.dumps({"at": time.time(), "sessions": count_sessions()}) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(line)
    tmp.replace(path)


def _probe(path: Path, interval: float) -> None:
    while True:
        with contextlib.suppress(OSError):  # the reader sees a stale time and says so
            write_count(path)
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    from broker.cli import main as cli_main  # noqa: PLC0415 - after the probe's own imports

    target = os.environ.get("BROKER_SESSION_PROBE")
    if target:
        interval = float(os.environ.get("BROKER_SESSION_PROBE_INTERVAL", "2"))
        thread = threading.Thread(
            target=_probe, args=(Path(target), interval), name="session-probe", daemon=True
        )
        thread.start()
    return cli_main(argv)


def read_count(path: Path) -> tuple[float, int | None]:
    """(time written, session count) from a probe file."""
    data = json.loads(path.read_text())
    sessions = data.get("sessions")
    return float(data["at"]), None if sessions is None else int(sessions)


if __name__ == "__main__":
    sys.exit(main())
