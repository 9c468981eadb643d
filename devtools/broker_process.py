"""One ``broker serve`` child process: started with its output appended to a log file, ready once
its gRPC health check answers SERVING, stopped by a signal and reaped.

:class:`devtools.stack.DevStack` runs its broker (and each replica's) through these; a start that
failed because a listener could not bind its port raises :class:`~devtools.ports.PortInUse`, so
the stack can move to fresh ports (:func:`devtools.ports.launch_on_fresh_ports`).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.peer import ROOT
from devtools.ports import PortInUse, says_port_in_use
from devtools.stack_setup import StackError

POLL_S = 0.2
TAIL = 3000  # characters of the log quoted in an error


def start_serving(
    argv: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    channel: Callable[[], grpc.Channel],
    timeout: float,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (stdout and stderr appended to ``log_path``) and wait until the health
    check over ``channel()`` answers SERVING. A child that exits first raises
    :class:`PortInUse` when this start's output says a port was taken, else
    :class:`StackError`; one not serving after ``timeout`` seconds raises :class:`StackError`.
    A child that did not come up (or whose wait was interrupted) is killed and reaped."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        child = subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=ROOT)
    try:
        _wait_serving(child, log_path, offset, channel, timeout)
    except BaseException:
        stop(child, sig=signal.SIGKILL)  # never leave a child that did not come up running
        raise
    return child


def _wait_serving(
    child: subprocess.Popen[bytes],
    log_path: Path,
    offset: int,
    channel: Callable[[], grpc.Channel],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if child.poll() is not None:
            output = log_path.read_bytes()[offset:].decode(errors="replace")
            error = PortInUse if says_port_in_use(output) else StackError
            raise error(f"broker exited early:\n{output[-TAIL:]}")
        try:
            with channel() as open_channel:
                resp = health_pb2_grpc.HealthStub(open_channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1.0
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            text = log_path.read_text(errors="replace")
            raise StackError(f"broker not serving after {timeout}s:\n{text[-TAIL:]}")
        time.sleep(POLL_S)


def stop(
    child: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 20.0
) -> int:
    """Send ``sig`` to a running ``child`` (SIGKILL after ``timeout`` seconds) and reap it;
    returns its exit code."""
    if child.poll() is None:
        child.send_signal(sig)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=5)
    return child.returncode
