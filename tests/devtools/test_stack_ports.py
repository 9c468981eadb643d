"""A port taken between ``free_port()`` and the broker's start (another pytest-xdist worker or
test run handed the same port) no longer fails the launch: the stack, or a replica that never
served, comes up on fresh ports (devtools.ports). The race is made certain here: the first port
handed out is one this test holds, listening."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

import devtools.stack
from devtools.peer import free_port
from devtools.ports import PortInUse, launch_on_fresh_ports, says_port_in_use
from tests.stacks import Stacks, login, start_with_retry


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other process has bound and listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def handing_out(*first: int) -> Callable[[], int]:
    """A ``free_port`` that hands out ``first`` before free ones."""
    queue = list(first)
    return lambda: queue.pop(0) if queue else free_port()


def test_a_launch_is_retried_while_a_port_is_taken() -> None:
    calls: list[int] = []

    def launch() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise PortInUse("broker exited early: address already in use")
        return "up"

    assert launch_on_fresh_ports(launch) == "up"
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(PortInUse):
        launch_on_fresh_ports(lambda: launch() and launch(), attempts=1)


def test_the_broker_output_of_a_taken_port_is_recognised() -> None:
    uvicorn = "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 3): "
    assert says_port_in_use(uvicorn + "address already in use")
    assert says_port_in_use("the gRPC server could not bind 127.0.0.1:3 (address in use?)")
    assert not says_port_in_use("broker serve: configuration: [key] uri is missing")


@pytest.mark.peer
@pytest.mark.softhsm
def test_a_stack_and_a_replica_come_up_although_their_first_port_was_taken(
    stacks: Stacks, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devtools.stack, "free_port", handing_out(taken))  # the web port
    a = stacks.up("a")
    assert taken not in (a.web_port, a.grpc_port)
    assert "address already in use" in a.broker_log()  # the first start did hit it
    assert a.config is not None and a.config.redirect_uri.endswith(f":{a.web_port}/callback")
    assert login(a)  # the peer knows the callback on the port the broker moved to

    monkeypatch.setattr(devtools.stack, "free_port", handing_out(free_port(), taken))  # gRPC
    r = stacks.replica(a, "r")
    assert r.grpc_port == taken
    start_with_retry(r)  # serving: start_broker waits for SERVING
    assert taken not in (r.web_port, r.grpc_port)
    assert r.config is not None and r.config.grpc_port == r.grpc_port
    assert "could not bind" in r.broker_log()
