"""The suite under pytest-xdist (``make unit`` runs it with ``-n``; ``PYTEST_WORKERS=0`` serially).

Each worker is its own process with its own session fixtures (its own SoftHSM token directory and
``SOFTHSM2_CONF``, its own integration peer, its own ``tmp_path_factory`` base directory), so what
remains shared between workers (and between two runs of the suite on one machine) is the local
PostgreSQL database and the port space: names of things created there carry :func:`worker_id`
plus randomness (:func:`unique_name`), and ports come from the kernel (port 0).

:func:`longest_first` hands the workers the long tests first (a 2-minute chaos test that starts
last makes the whole run 2 minutes longer). :func:`make_scheduler` keeps the tests of a module with an expensive module-scoped
fixture (a wheel, a virtualenv, a peer) on one worker (:func:`make_scheduler`), which would otherwise
build it once per worker that gets one of its tests.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest


def worker_id() -> str:
    """``gw0``, ``gw1``, ... under xdist; ``main`` in a serial run."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def unique_name(prefix: str) -> str:
    """A lower-case identifier no other test, worker or concurrent run uses (for PostgreSQL
    schema names: ``prefix_<worker>_<pid>_<random>``)."""
    return f"{prefix}_{worker_id()}_{os.getpid():x}_{secrets.token_hex(6)}"


SHARED_FIXTURE_MODULES = (
    "tests/client/test_client_install.py",  # a client wheel and a clean venv (~9 s)
    "tests/deploy/test_image_replay.py",  # the image's build and runtime venvs (~19 s)
    "tests/deploy/test_wheel.py",  # a broker wheel
    "tests/integration/test_peer_clients.py",  # a node peer with two clients
)
"""Modules whose module-scoped fixture costs more than spreading their tests gains. Not every
module with one: tests/cli/test_ceremony_crash.py's token takes under a second to initialise and
its tests take two minutes, so they spread."""


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The xdist scheduler of the suite: each test is its own unit of work, handed to the next
    idle worker, except that the tests of a module in :data:`SHARED_FIXTURE_MODULES` are one unit
    (xdist's ``xdist_group`` marks do not group under pytest 9: ``--dist loadgroup`` renames
    ``item._nodeid``, which pytest 9 no longer reads)."""
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class SharedFixtureScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in SHARED_FIXTURE_MODULES else nodeid

    return SharedFixtureScheduling(config, log)


STACK_DIRS = ("tests/chaos/", "tests/e2e/")
"""Whole local systems as processes: most of the suite's time, a few tests a minute or more."""


def longest_first(items: list[pytest.Item]) -> None:
    """Under xdist, reorder ``items`` (stably): tests marked ``slow`` first, then the rest of
    :data:`STACK_DIRS`, then everything else. Every worker sorts its identical collection the same
    way; a serial run keeps the collection order."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slow") is not None:
            return 0
        return 1 if item.nodeid.startswith(STACK_DIRS) else 2

    items.sort(key=rank)
