"""J03 soak, short: ``bench/soak.py``'s ``soak()`` for 60 s with 50 grants against ``broker serve``
and the real peer, the AS link reset twice and down for 10 s (the full 10-minute run is
``bench/soak.py`` itself; its committed result is in ``bench/results/soak-*.md``).

Asserted: no grant lost; no INTERNAL (or UNKNOWN) status; the serve process's open fds at the end
equal the start exactly, except its keep-alive connections to the AS, which httpx's pool opens
and closes as it likes (bounded by its keep-alive limit, 20); its SoftHSM sessions at the end
equal the start (counted inside the process by ``devtools.session_probe``); at most 1.5
refresh requests per grant per access-token lifetime at the AS.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from devtools.peer import ROOT
from tests.stacks import Stacks

HTTPX_KEEPALIVE_LIMIT = 20  # httpx.Limits() default max_keepalive_connections


def load_soak() -> ModuleType:
    bench = ROOT / "bench"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))  # soak.py imports bench/common.py as ``common``
    spec = importlib.util.spec_from_file_location("bench_soak", bench / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_soak"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.peer
@pytest.mark.softhsm
@pytest.mark.slow
def test_j03_short_soak_keeps_grants_fds_and_hsm_sessions_under_as_faults(
    stacks: Stacks, tmp_path: Path
) -> None:
    soak = load_soak()
    options = soak.SoakOptions(
        duration=60.0, grants=50, rate=50.0, outage=10.0, restart_down=3.0, sample=5.0
    )
    report: dict[str, Any] = soak.soak(options, tmp_path / "soak")
    soak.write(report, tmp_path / "results")  # printed: the numbers are in the test output

    assert report["grants_lost"] == 0, report["grant_statuses"]
    assert report["grant_statuses"]["GRANT_STATUS_ACTIVE"] == options.grants
    assert report["grant_statuses"]["NOT_SERVING_AT_END"] == 0
    errors = report["errors_by_code"]
    assert "INTERNAL" not in errors and "UNKNOWN" not in errors, errors
    assert report["calls"].get("OK", 0) > 0.5 * report["calls_total"]

    start, end = report["baseline"], report["final"]
    assert report["fds_without_as_link"]["end"] == report["fds_without_as_link"]["start"], (
        start,
        end,
    )
    assert end["fds_by_kind"].get("as_link", 0) <= HTTPX_KEEPALIVE_LIMIT, end
    assert start["sessions"] is not None
    assert end["sessions"] == start["sessions"]

    refresh = report["refresh"]
    assert refresh["per_grant_per_lifetime"] <= 1.5, refresh
    assert refresh["by_status"].get("400", 0) == 0, refresh
