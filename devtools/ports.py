"""Launching a child on ports chosen before it starts, without losing a race for them.

:func:`devtools.peer.free_port` asks the kernel for a port that is free now and releases it, so
the child that binds it later can find it taken: by another pytest-xdist worker or test run that
was handed the same port, or by any process's outgoing connection. Where the child cannot bind
port 0 and report what it got (the broker's ports are written in its configuration, and the peer
registers the broker's callback URL before the broker starts), the launcher goes through
:func:`launch_on_fresh_ports`: a start that failed because a port was taken (:class:`PortInUse`,
recognised in the child's output by :func:`says_port_in_use`) moves to fresh ports and starts
again. ``DevStack`` does so until its broker first served (later, its ports are known to callers):
the peer knows the callback on each web port the primary may move to, so the issuer, and the
grant store bound to it, stay.

A port in use fails the start of both broker listeners: uvicorn binds without SO_REUSEPORT, and
the gRPC server sets ``grpc.so_reuseport`` to 0 (with gRPC's default a second server on a served
port would start and share its connections).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from devtools.stack_setup import StackError

PORT_ATTEMPTS = 5
_IN_USE = re.compile(r"address already in use|could not bind", re.IGNORECASE)

T = TypeVar("T")


class PortInUse(StackError):
    """A child process could not bind a port it was given."""


def says_port_in_use(output: str) -> bool:
    """Whether a failed start's output says a listener could not bind its port (uvicorn:
    ``[Errno 98] ... address already in use``; the gRPC server: ``could not bind``)."""
    return _IN_USE.search(output) is not None


def launch_on_fresh_ports(launch: Callable[[], T], *, attempts: int = PORT_ATTEMPTS) -> T:
    """``launch()``, again while it raises :class:`PortInUse` (at most ``attempts`` times).
    Each call picks its own ports and leaves nothing running when it raises."""
    for attempt in range(1, attempts + 1):
        try:
            return launch()
        except PortInUse:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")
