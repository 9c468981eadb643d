"""A real headless browser (Debian ``chromium``) through a whole login against the oidc-provider
peer: the start link on the broker, the peer's auto-login, the callback's result page.

Chromium's own CLI does the driving (``--dump-dom`` and ``--screenshot`` of the page it ends
on), so no WebDriver is needed. The listener's certificate comes from the test CA; Chromium is
told ``--ignore-certificate-errors`` (a loopback test listener) rather than given an NSS db.
The test runs whenever ``/usr/bin/chromium`` exists (``scripts/bootstrap.sh`` installs it) and
skips, saying so, otherwise. ``BROKER_BROWSER_SCREENSHOT=path`` also copies the screenshot there
(how docs/login-completed.png is made).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from broker.clock import SystemClock
from broker.keys.api import Signer
from broker.login import LoginState
from broker.web.app import create_app
from broker.web.links import BrowserLinks, LinkedLogins
from devtools.peer import Peer, Pki
from tests.integration.conftest import SwappableApp
from tests.integration.flow import make_stack

pytestmark = [pytest.mark.peer, pytest.mark.softhsm]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
    "--window-size=900,560",
)


@pytest.fixture
async def http(pki: Pki) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=pki.ssl_context()) as client:
        yield client


async def browse(url: str, workdir: Path, *, timeout: float = 90.0) -> tuple[str, Path]:
    """Open ``url`` in a fresh headless Chromium; the DOM it ends on and its screenshot."""
    shot = workdir / "page.png"
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={workdir / 'profile'}",
        f"--screenshot={shot}",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(workdir)},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode("utf-8"), shot


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (scripts/bootstrap.sh)")
async def test_browser_follows_the_start_link_and_lands_on_the_completed_page(
    *,
    peer: Peer,
    client_signer: Signer,
    broker_web: SwappableApp,
    broker_base_url: str,
    http: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    peer.reset_log()
    stack = make_stack(peer, client_signer, broker_web, broker_base_url, http)
    links = BrowserLinks(broker_base_url, SystemClock())
    broker_web.app = create_app(stack.login, redirect_uri=stack.config.redirect_uri, links=links)
    linked = await LinkedLogins(stack.login, links).start(label="browser", owner="app")
    start_url = linked.authorization_url or ""
    assert start_url.startswith(f"{broker_base_url}/start/")

    dom, shot = await browse(start_url, tmp_path)

    assert "<h1>Login complete</h1>" in dom, dom[:2000]
    assert "You can close this window." in dom
    assert "<script" not in dom
    done = await stack.login.get(linked.login_id)
    assert done.state is LoginState.COMPLETED and done.grant_id == "grant-1"
    ((tokens, label, _, _),) = stack.sink.grants
    assert label == "browser"
    for secret in (tokens.access_token, tokens.refresh_token or "", linked.login_id):
        assert secret not in dom
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000
    keep = os.environ.get("BROKER_BROWSER_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
