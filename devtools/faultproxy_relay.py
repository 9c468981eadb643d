"""The data side of the fault proxy: one relayed connection with the active toxics applied.

:class:`ToxicRelay` is mixed into :class:`devtools.faultproxy.FaultProxy` (whose docstring lists
the toxics): ``_handle`` serves one accepted client connection on the proxy's loop: refused when
the proxy is down, swallowed under ``timeout``, else connected upstream (TLS re-originated when
the proxy terminates TLS) and pumped both ways, each chunk delayed, throttled, counted, and the
response cut by ``reset_after`` / ``limit_data`` / ``reset_on_request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devtools.faultproxy import ProxyTls, Toxics

CHUNK = 65536
REQUEST_MEMORY = 65536
"""How many bytes of the current request a connection keeps to match ``reset_on_request``."""
CONNECT_TIMEOUT = 10.0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s connection with a TCP RST (SO_LINGER 0, then abort)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None and not writer.transport.is_closing():
        writer.close()


class Conn:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.request = bytearray()
        self.awaiting_response = False
        self.sent_down = 0
        self.poisoned = False
        self.closed = False

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        _reset(self.client)
        _close(self.upstream)

    def finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        _close(self.client)
        _close(self.upstream)


class ToxicRelay:
    """Relaying connections under the active toxics; mixed into the fault proxy."""

    if TYPE_CHECKING:
        _upstream: tuple[str, int]
        _tls: ProxyTls | None
        _toxics: Toxics
        _conns: set[Conn]
        _tasks: set[asyncio.Task[None]]
        _stopping: bool
        _relayed: list[tuple[str, int]]

        def _count(self, **deltas: int) -> None: ...

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(writer)
        self._conns.add(conn)
        self._count(accepted=1)
        try:
            if self._toxics.down or self._stopping:  # accepted just before the listener closed
                conn.reset()
                return
            if self._toxics.timeout:
                conn.poisoned = True
                await self._swallow(reader, conn)
                return
            host, port = self._upstream
            try:
                up_reader, conn.upstream = await asyncio.wait_for(
                    asyncio.open_connection(
                        host,
                        port,
                        ssl=self._tls.client if self._tls else None,
                        server_hostname=self._tls.server_hostname if self._tls else None,
                    ),
                    CONNECT_TIMEOUT,
                )
            except (OSError, TimeoutError, ssl.SSLError):
                self._count(upstream_failures=1)
                conn.reset()
                return
            self._relayed.append((host, port))
            pumps = [
                asyncio.ensure_future(self._pump_request(reader, conn)),
                asyncio.ensure_future(self._pump_response(up_reader, conn)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            conn.reset()
        finally:
            conn.finish()
            self._conns.discard(conn)
            self._tasks.discard(task)

    async def _swallow(self, reader: asyncio.StreamReader, conn: Conn) -> None:
        while not conn.closed:
            data = await reader.read(CHUNK)
            if not data:
                return
            self._count(swallowed_bytes=len(data))

    async def _delay(self) -> None:
        if self._toxics.latency_ms:
            await asyncio.sleep(self._toxics.latency_ms / 1000.0)

    async def _pump_request(self, reader: asyncio.StreamReader, conn: Conn) -> None:
        assert conn.upstream is not None
        while not conn.closed:
            data = await reader.read(CHUNK)
            if not data:
                return
            if not conn.awaiting_response:
                conn.awaiting_response = True
                conn.request.clear()
                self._count(requests=1)
            conn.request += data[: max(0, REQUEST_MEMORY - len(conn.request))]
            if self._toxics.timeout:
                conn.poisoned = True
                self._count(swallowed_bytes=len(data))
                continue
            await self._delay()
            if conn.closed:
                return
            conn.upstream.write(data)
            await conn.upstream.drain()
            self._count(bytes_up=len(data))

    def _should_reset_response(self, conn: Conn) -> bool:
        t = self._toxics
        if t.reset_on_request is None or t.reset_on_request not in conn.request:
            return False
        if t.reset_budget is None:
            return True
        if t.reset_budget == 0:
            return False
        self._toxics = dataclasses.replace(t, reset_budget=t.reset_budget - 1)
        return True

    async def _pump_response(self, reader: asyncio.StreamReader, conn: Conn) -> None:
        while not conn.closed:
            data = await reader.read(CHUNK)
            if not data:
                return
            if self._toxics.timeout or conn.poisoned:
                conn.poisoned = True
                self._count(swallowed_bytes=len(data))
                continue
            if conn.awaiting_response:
                conn.awaiting_response = False
                if self._should_reset_response(conn):
                    conn.reset()
                    self._count(resets=1)
                    return
                self._count(responses=1)
            await self._delay()
            await self._forward_down(data, conn)

    async def _forward_down(self, data: bytes, conn: Conn) -> None:
        view = memoryview(data)
        while view and not conn.closed:
            if self._at_limit(conn):
                return
            t = self._toxics
            size = len(view)
            if t.bandwidth is not None:
                size = min(size, max(1, t.bandwidth // 10))
            for bound in (t.reset_after, t.limit_data):
                if bound is not None:
                    size = min(size, bound - conn.sent_down)
            piece, view = view[:size], view[size:]
            conn.client.write(piece)
            await conn.client.drain()
            conn.sent_down += len(piece)
            self._count(bytes_down=len(piece))
            if self._at_limit(conn):
                return
            if t.bandwidth is not None:
                await asyncio.sleep(len(piece) / t.bandwidth)

    def _at_limit(self, conn: Conn) -> bool:
        """Apply ``reset_after`` / ``limit_data`` once the bound is reached; True if closed."""
        t = self._toxics
        if t.reset_after is not None and conn.sent_down >= t.reset_after:
            conn.reset()
            self._count(resets=1)
            return True
        if t.limit_data is not None and conn.sent_down >= t.limit_data:
            conn.finish()
            self._count(limited=1)
            return True
        return False
