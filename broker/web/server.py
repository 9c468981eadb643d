"""Run the listener with uvicorn inside the current event loop (tests and ``broker serve``).

TLS is on when a certificate and key are given. The access log is off: callback URLs carry the
authorization code and state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from broker.errors import ConfigError


@dataclass(frozen=True)
class TlsFiles:
    certfile: str
    keyfile: str


class _InProcessServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class WebServer:
    """``await start()`` binds and serves in an asyncio task; ``await stop()`` shuts it down."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TlsFiles | None = None,
        log_level: str = "warning",
    ) -> None:
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=tls.certfile if tls else None,
            ssl_keyfile=tls.keyfile if tls else None,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            server_header=False,
            proxy_headers=False,
        )
        self._host = host
        self._tls = tls is not None
        self._server = _InProcessServer(self._config)
        self._task: asyncio.Task[None] | None = None
        self._port: int | None = None

    def __repr__(self) -> str:
        return f"WebServer(host={self._host!r}, port={self._port}, tls={self._tls})"

    @property
    def port(self) -> int:
        if self._port is None:
            raise ConfigError("the web server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self._host}:{self.port}"

    async def start(self) -> None:
        if self._task is not None:
            raise ConfigError("the web server is already started")
        self._task = asyncio.create_task(self._serve(), name="broker-web")
        while not self._server.started:
            if self._task.done():
                task, self._task = self._task, None
                exc = task.exception()
                raise ConfigError("the web server failed to start") from exc
            await asyncio.sleep(0.01)
        sockets = [s for srv in self._server.servers for s in (srv.sockets or ())]
        self._port = int(sockets[0].getsockname()[1])

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:  # uvicorn exits the process when it cannot bind
            raise ConfigError(f"the web server could not start on {self._host}") from exc

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None
