"""The test listener's port: a candidate port another process took after the session found it
free (another pytest-xdist worker, an outgoing connection) moves the listener to the next
candidate, whose callback the peer also knows, and a login through it completes."""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from broker.keys.api import Signer
from broker.login import LoginState
from devtools.peer import Peer, Pki
from tests.integration.conftest import SwappableApp
from tests.integration.flow import follow_to_callback, make_stack

pytestmark = [pytest.mark.peer, pytest.mark.softhsm]


@pytest.fixture
def first_candidate_taken(web_ports: list[int]) -> Iterator[int]:
    """Another process listens on the first candidate port for the whole test.

    SO_REUSEADDR: an earlier test's listener on this port may have left connections in
    TIME_WAIT, which would refuse a plain bind; a listening socket still excludes the broker's.
    A bind refused anyway means someone else holds the port, which is the situation under test.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", web_ports[0]))
            sock.listen()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        yield web_ports[0]


@pytest.fixture
def moved_web(first_candidate_taken: int, broker_web: SwappableApp) -> SwappableApp:
    """The listener, started after the first candidate was taken."""
    assert broker_web.port != first_candidate_taken
    return broker_web


@pytest.fixture
async def http(pki: Pki) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=pki.ssl_context(), follow_redirects=False) as client:
        yield client


async def test_a_taken_port_moves_the_listener_to_another_registered_one(
    moved_web: SwappableApp,
    peer: Peer,
    client_signer: Signer,
    broker_base_url: str,
    http: httpx.AsyncClient,
) -> None:
    assert broker_base_url == f"https://127.0.0.1:{moved_web.port}"
    stack = make_stack(peer, client_signer, moved_web, broker_base_url, http)
    view = await stack.login.start(label="ops")
    _, resp = await follow_to_callback(
        http, view.authorization_url or "", stack.config.redirect_uri
    )
    assert resp.status_code == 200, resp.text
    assert (await stack.login.get(view.login_id)).state is LoginState.COMPLETED
