"""``make demo`` (``python -m devtools.demo``) runs end to end and leaves no process behind: after it
exits, no ``node peer.mjs`` and no ``broker serve`` started from its work directory is alive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.peer import ROOT, PeerUnavailable, ensure_node_modules

pytestmark = [pytest.mark.peer, pytest.mark.slow, pytest.mark.softhsm]

DEMO_TIMEOUT_S = 300  # a bound on a hang, not a speed assertion


def processes_mentioning(text: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def test_demo_runs_and_leaves_no_process_behind(tmp_path: Path) -> None:
    try:
        ensure_node_modules()
    except PeerUnavailable as exc:
        pytest.skip(f"the demo needs node + npm: {exc}")
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.demo", "--workdir", str(workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=DEMO_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftovers = processes_mentioning(str(workdir))
        for line in leftovers:  # never leave them running, even when the test fails
            subprocess.run(["kill", "-9", line.split()[0]], check=False)
    assert proc.returncode == 0, out[-3000:]
    assert "nothing left running" in out
    assert "tokens.refresh" in out and "keys.sign" in out  # the trace tree was printed
    assert leftovers == []
