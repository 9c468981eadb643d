"""An HTTP CONNECT proxy on loopback that sends every tunnel to one upstream address.

gRPC honours ``grpc_proxy`` (RFC 7231 4.3.6 CONNECT, the target's name left unresolved), so a
test can run client code naming ``broker.internal:50051`` unchanged while the broker listens on
``127.0.0.1:<port 0>``: TLS still checks the certificate against ``broker.internal``."""

from __future__ import annotations

import selectors
import socket
import socketserver
import threading
from types import TracebackType

HEAD_LIMIT = 8192
CHUNK = 65536


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        client: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(1024)
            if not data or len(head) > HEAD_LIMIT:
                return
            head += data
        method, authority, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        self.server.authorities.append(authority)
        with socket.create_connection(self.server.upstream) as upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                upstream.sendall(rest)
            _pipe(client, upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    peer = {a: b, b: a}
    with selectors.DefaultSelector() as sel:
        sel.register(a, selectors.EVENT_READ)
        sel.register(b, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(CHUNK)
                except OSError:
                    return
                if not data:
                    return
                peer[sock].sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.authorities: list[str] = []


class ConnectProxy:
    """``with ConnectProxy(("127.0.0.1", port)) as proxy``: ``proxy.url`` for ``grpc_proxy``;
    ``proxy.authorities`` are the ``host:port`` the clients asked to CONNECT to."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._server = _Server(upstream)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="connect-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def authorities(self) -> list[str]:
        return list(self._server.authorities)

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
