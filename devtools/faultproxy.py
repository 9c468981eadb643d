"""A fault proxy for tests: a small asyncio TCP proxy on loopback with switchable toxics.

It sits between the broker and the authorization server (the test peer) and injects the
network faults of catalogue rows A04, A06, A07 and J04 (the shapes of Shopify/toxiproxy):

- ``latency_ms``: every chunk, in either direction, is held this long before it is forwarded;
- ``bandwidth``: the response direction (AS -> client) is forwarded at most this many bytes per
  second (``1`` is a 1 byte/s trickle);
- ``reset_after``: the client connection is reset (TCP RST) once this many response bytes have
  been forwarded on it (``0``: at the first response byte, i.e. before any response is
  delivered);
- ``reset_on_request``: the client connection is reset when the response to a request whose
  bytes contain this marker starts (the AS has processed the request, the client never gets the
  answer), at most ``reset_budget`` times (``None``: unlimited);
- ``limit_data``: the client connection is closed (FIN) after this many response bytes;
- ``timeout``: connections are accepted and never answered (data is swallowed in both
  directions; connections that swallowed data are reset when the toxic is cleared, their
  streams being broken);
- ``down``: the listening socket is closed (new connections are refused) and every open
  connection is reset; clearing it listens again on the same port.

Two modes. Plain (``tls=None``): bytes are relayed as they are (TLS passes through untouched),
so ``reset_on_request`` cannot see inside TLS. TLS-terminating (``tls=ProxyTls(...)``): the
proxy presents the AS's certificate to the client and opens its own verified TLS connection to
the AS, so request-aware toxics work on the plaintext HTTP/1.1 exchange. The client must reach
the AS *through* the proxy's address, which is what the AS advertises as its issuer (the peer's
``public_port`` setting).

``retarget(port)`` points the proxy at another upstream: connections accepted from then on go
there, open ones stay where they are (a switchable front for two listeners sharing one public
address, e.g. two broker replicas behind one ``public_base_url``). ``upstreams()`` lists, per
relayed connection in accept order, the upstream it was connected to.

The proxy runs its own event loop in a daemon thread so synchronous tests can drive it:
``start()``/``stop()`` (or ``with FaultProxy(...) as proxy``), ``set(Toxics(...))``,
``update(**changes)``, ``clear()``, ``reset_all()``, ``retarget()``, ``upstreams()`` and
``stats()`` are thread-safe. ``stop()`` resets every connection and joins the thread: nothing
outlives it.

Layout: this module holds the toxics, the proxy's control side (thread, listener, the public
calls); relaying a connection under the toxics is :class:`devtools.faultproxy_relay.ToxicRelay`,
mixed in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from devtools.faultproxy_relay import CONNECT_TIMEOUT, Conn, ToxicRelay

LOOPBACK = "127.0.0.1"
CONTROL_TIMEOUT = 10.0

T = TypeVar("T")


class FaultProxyError(RuntimeError):
    """The proxy could not start, was used while stopped, or got an invalid toxic."""


@dataclass(frozen=True)
class Toxics:
    """The faults applied to every connection (see the module docstring). Defaults: none."""

    latency_ms: int = 0
    bandwidth: int | None = None
    reset_after: int | None = None
    reset_on_request: bytes | None = None
    reset_budget: int | None = None
    limit_data: int | None = None
    timeout: bool = False
    down: bool = False

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise FaultProxyError("latency_ms must not be negative")
        if self.bandwidth is not None and self.bandwidth < 1:
            raise FaultProxyError("bandwidth must be at least 1 byte/s")
        for name in ("reset_after", "limit_data", "reset_budget"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise FaultProxyError(f"{name} must not be negative")
        if self.reset_on_request is not None and not self.reset_on_request:
            raise FaultProxyError("reset_on_request must be a non-empty marker")


NO_TOXICS = Toxics()


@dataclass(frozen=True)
class ProxyTls:
    """TLS termination: the context the proxy serves with (the AS's certificate and key) and
    the context it connects to the AS with (verifying the AS against ``server_hostname``)."""

    server: ssl.SSLContext = field(repr=False)
    client: ssl.SSLContext = field(repr=False)
    server_hostname: str = LOOPBACK


@dataclass(frozen=True)
class ProxyStats:
    """Counters since start (a snapshot)."""

    accepted: int = 0
    upstream_failures: int = 0
    requests: int = 0
    """Request starts seen (client bytes after a response, or the first on a connection)."""
    responses: int = 0
    """Response starts forwarded to a client."""
    resets: int = 0
    limited: int = 0
    swallowed_bytes: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    open_connections: int = 0


class FaultProxy(ToxicRelay):
    """``127.0.0.1:<port>`` -> ``upstream_host:upstream_port`` with switchable :class:`Toxics`."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_port: int = 0,
        tls: ProxyTls | None = None,
    ) -> None:
        if not 0 <= listen_port <= 65535 or not 0 < upstream_port <= 65535:
            raise FaultProxyError("ports must be within 0..65535 (upstream: 1..65535)")
        self._upstream = (upstream_host, upstream_port)
        self._port = listen_port
        self._tls = tls
        self._toxics = NO_TOXICS
        self._stats = ProxyStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._relayed: list[tuple[str, int]] = []

    # --- public, thread-safe ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (known after ``start()`` when 0 was asked for)."""
        return self._port

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self._port}"

    def start(self) -> None:
        if self._thread is not None:
            raise FaultProxyError("the proxy is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._call(self._listen())
        except BaseException:
            self._halt()
            raise

    def stop(self) -> None:
        """Reset every connection, stop listening and end the thread (idempotent)."""
        if self._thread is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            self._halt()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def toxics(self) -> Toxics:
        return self._toxics

    def set(self, toxics: Toxics) -> None:
        """Replace the active toxics (takes effect for the next chunk of every connection)."""
        if not isinstance(toxics, Toxics):
            raise FaultProxyError("set() takes a Toxics value")
        self._call(self._apply(toxics))

    def update(self, **changes: Any) -> Toxics:
        """Change some toxics, keep the others; returns the new set."""
        try:
            new = dataclasses.replace(self._toxics, **changes)
        except TypeError as exc:
            raise FaultProxyError(f"unknown toxic in {sorted(changes)}") from exc
        self.set(new)
        return new

    def clear(self) -> None:
        self.set(NO_TOXICS)

    def reset_all(self) -> int:
        """Reset every open client connection now; returns how many."""
        return self._call(self._reset_all())

    def stats(self) -> ProxyStats:
        return dataclasses.replace(self._stats, open_connections=len(self._conns))

    @property
    def upstream(self) -> tuple[str, int]:
        return self._upstream

    def retarget(self, port: int, host: str | None = None) -> None:
        """Connect connections accepted from now on to ``host:port`` (``host`` unchanged when
        None); connections already open keep their upstream."""
        if not 0 < port <= 65535:
            raise FaultProxyError("the upstream port must be within 1..65535")
        target = (self._upstream[0] if host is None else host, port)
        self._call(self._retarget(target))

    def upstreams(self) -> list[tuple[str, int]]:
        """The upstream of every relayed connection (connected upstream), in accept order."""
        return self._call(self._relayed_copy())

    # --- loop side -------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or not loop.is_running():
            coro.close()
            raise FaultProxyError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=CONTROL_TIMEOUT)

    def _halt(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=CONTROL_TIMEOUT)
        if not thread.is_alive():
            loop.close()

    def _count(self, **deltas: int) -> None:
        self._stats = dataclasses.replace(
            self._stats, **{k: getattr(self._stats, k) + v for k, v in deltas.items()}
        )

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle,
            LOOPBACK,
            self._port,
            ssl=self._tls.server if self._tls else None,
            reuse_address=True,
            ssl_handshake_timeout=CONNECT_TIMEOUT if self._tls else None,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def _retarget(self, target: tuple[str, int]) -> None:
        self._upstream = target

    async def _relayed_copy(self) -> list[tuple[str, int]]:
        return list(self._relayed)

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def _shutdown(self) -> None:
        self._stopping = True
        await self._unlisten()
        for _ in range(3):  # let connections accepted just before the close register
            await asyncio.sleep(0)
        await self._reset_all()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CONTROL_TIMEOUT)

    async def _reset_all(self) -> int:
        conns = [c for c in self._conns if not c.closed]
        for conn in conns:
            conn.reset()
        self._count(resets=len(conns))
        return len(conns)

    async def _apply(self, toxics: Toxics) -> None:
        old, self._toxics = self._toxics, toxics
        if toxics.down and not old.down:
            await self._unlisten()
            await self._reset_all()
        elif old.down and not toxics.down:
            await self._listen()
        if old.timeout and not toxics.timeout:
            for conn in [c for c in self._conns if c.poisoned and not c.closed]:
                conn.reset()
                self._count(resets=1)
