"""The real broker gRPC server (mTLS, generated PKI, fake token core) on its own event loop
thread, so blocking client code (``TokenSource``, ``requests``) can call it from the test."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.server.conftest import APP, Harness, make_harness
from tests.server.fakes import FakeBroker, FakeToken

T = TypeVar("T")

# The fake token core's tokens expire at 1_800_000_300 (+ n for renewal n); a fake clock here
# leaves them 300 s.
NOW = 1_800_000_000.0
WAIT = 20.0  # generous: the machine is shared


@dataclass(frozen=True)
class ClientFiles:
    ca: Path
    cert: Path
    key: Path


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class LiveBroker:
    harness: Harness
    loop: asyncio.AbstractEventLoop
    tmp_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.harness.port}"

    @property
    def broker(self) -> FakeBroker:
        return self.harness.broker

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self.run(call())

    def push(self, token: FakeToken | None) -> None:
        """Deliver a renewal (or, with ``None``, end) on the open watch streams."""
        self.on_loop(lambda: self.broker.updates.put_nowait(token))

    def set_error(self, error: BaseException | None) -> None:
        def assign() -> None:
            self.broker.error = error

        self.on_loop(assign)

    def change_grant(self, grant_id: str, **changes: Any) -> None:
        def assign() -> None:
            grants = self.broker.grants
            grants[grant_id] = dataclasses.replace(grants[grant_id], **changes)

        self.on_loop(assign)

    def calls(self, kind: str) -> list[tuple[str, str, float | None]]:
        return [c for c in list(self.broker.calls) if c[0] == kind]

    def files(self, identity: str = APP) -> ClientFiles:
        issued = self.harness.ca.issue(uris=(identity,))
        folder = self.tmp_path / f"client-{len(list(self.tmp_path.glob('client-*')))}"
        folder.mkdir()
        ca, cert, key = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
        ca.write_bytes(self.harness.server_ca.pem)
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem)
        key.chmod(0o600)
        return ClientFiles(ca, cert, key)


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


async def async_wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextmanager
def serve(tmp_path: Path, **harness_options: Any) -> Iterator[LiveBroker]:
    """The server of :func:`tests.server.conftest.make_harness` (with ``harness_options``) on
    its own event loop thread, stopped on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="broker-server", daemon=True)
    thread.start()
    harness, provider = asyncio.run_coroutine_threadsafe(
        make_harness(tmp_path, **harness_options), loop
    ).result(WAIT)
    live = LiveBroker(harness, loop, tmp_path)
    try:
        yield live
    finally:
        live.push(None)  # end open watch streams
        live.run(harness.running.stop(None))
        provider.shutdown()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveBroker]:
    with serve(tmp_path) as running:
        yield running
