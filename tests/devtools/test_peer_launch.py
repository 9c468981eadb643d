"""The peer launcher never waits for ever on a node that hangs at start-up (seen once in CI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devtools import peer

HANGS_ONCE = """
import fs from 'node:fs';
const marker = process.argv[2] + '.started';
if (!fs.existsSync(marker)) { fs.writeFileSync(marker, '1'); setInterval(() => {}, 1000); }
else { process.stdout.write(JSON.stringify({ ready: true }) + '\\n'); setInterval(() => {}, 1000); }
"""
NEVER_READY = "setInterval(() => {}, 1000);\n"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def _fake_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    (tmp_path / "peer.mjs").write_text(script)
    monkeypatch.setattr(peer, "PEER_DIR", tmp_path)
    monkeypatch.setattr(peer, "START_TIMEOUT", 1.0)
    config = tmp_path / "config.json"
    config.write_text("{}")
    return config


def test_a_start_that_hangs_is_killed_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _fake_peer(tmp_path, monkeypatch, HANGS_ONCE)
    process, line = peer._launch(config, {"PATH": "/usr/bin:/bin"}, tmp_path / "err")
    try:
        assert json.loads(line) == {"ready": True}
    finally:
        process.kill()
        process.wait(timeout=5)
        assert process.stdout is not None
        process.stdout.close()


def test_a_peer_that_never_gets_ready_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _fake_peer(tmp_path, monkeypatch, NEVER_READY)
    with pytest.raises(peer.PeerUnavailable, match="printed nothing"):
        peer._launch(config, {"PATH": "/usr/bin:/bin"}, tmp_path / "err")
