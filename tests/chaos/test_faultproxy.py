"""The fault proxy itself (devtools/faultproxy.py) against a loopback upstream: every toxic
does what it says and leaves nothing behind. The AS-facing chaos tests (A04, A06, A07, J04) are in
test_as_link.py."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.faultproxy import FaultProxy, FaultProxyError, ProxyTls, Toxics
from devtools.pki import Ca

IO_TIMEOUT = 10.0  # a bound on every socket operation (never asserted on)


class Upstream:
    """A threaded loopback server: a chunk holding a decimal number N is answered with N bytes
    of b"x"; anything else is echoed. Optionally TLS."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self._context = context
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.accepted = 0
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._main = threading.Thread(target=self._serve, daemon=True)
        self._main.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._conn, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _conn(self, raw: socket.socket) -> None:
        try:
            conn = self._context.wrap_socket(raw, server_side=True) if self._context else raw
            conn.settimeout(0.2)
            with conn:
                while not self._stop.is_set():
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        return
                    self.received.append(data)
                    text = data.strip()
                    conn.sendall(b"x" * int(text) if text.isdigit() else data)
        except (OSError, ssl.SSLError):
            return

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._main.join(IO_TIMEOUT)
        for thread in self._threads:
            thread.join(IO_TIMEOUT)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", upstream.port) as p:
        yield p
    assert p.stats().open_connections == 0


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_passthrough_relays_both_directions(proxy: FaultProxy, upstream: Upstream) -> None:
    with connect(proxy.port) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        sock.sendall(b"300")
        assert recv_exactly(sock, 300) == b"x" * 300
    stats = proxy.stats()
    assert stats.requests == 2 and stats.responses == 2
    assert upstream.received == [b"hello", b"300"]


def test_retarget_sends_new_connections_to_the_new_upstream_and_keeps_open_ones(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    other = Upstream()
    try:
        with connect(proxy.port) as before:
            before.sendall(b"one")
            assert recv_exactly(before, 3) == b"one"
            proxy.retarget(other.port)
            assert proxy.upstream == ("127.0.0.1", other.port)
            with connect(proxy.port) as after:
                after.sendall(b"two")
                assert recv_exactly(after, 3) == b"two"
            before.sendall(b"three")  # the open connection still reaches the first upstream
            assert recv_exactly(before, 5) == b"three"
        assert upstream.received == [b"one", b"three"]
        assert other.received == [b"two"]
        assert proxy.upstreams() == [("127.0.0.1", upstream.port), ("127.0.0.1", other.port)]
        with pytest.raises(FaultProxyError):
            proxy.retarget(0)
    finally:
        other.close()


def test_latency_keeps_the_stream_intact(proxy: FaultProxy) -> None:
    proxy.update(latency_ms=50)
    with connect(proxy.port) as sock:
        sock.sendall(b"2000")
        assert recv_exactly(sock, 2000) == b"x" * 2000


def test_a04_trickle_delivers_one_byte_per_second_until_cleared(proxy: FaultProxy) -> None:
    proxy.update(bandwidth=1)
    with connect(proxy.port) as sock:
        sock.sendall(b"1000")
        first = sock.recv(1000)
        # At 1 byte/s the whole 1000 bytes would take 1000 s: only a trickle has arrived.
        assert 1 <= len(first) < 1000
        assert proxy.stats().bytes_down < 1000
        proxy.clear()
        rest = recv_exactly(sock, 1000 - len(first))
        assert first + rest == b"x" * 1000


def test_reset_after_n_bytes(proxy: FaultProxy) -> None:
    proxy.update(reset_after=100)
    with connect(proxy.port) as sock:
        sock.sendall(b"1000")
        assert recv_exactly(sock, 100) == b"x" * 100
        with pytest.raises(ConnectionResetError):
            while sock.recv(1000):
                pass
    assert proxy.stats().resets == 1


def test_limit_data_closes_after_n_bytes(proxy: FaultProxy) -> None:
    proxy.update(limit_data=10)
    with connect(proxy.port) as sock:
        sock.sendall(b"1000")
        assert recv_exactly(sock, 1000) == b"x" * 10  # then EOF
    assert proxy.stats().limited == 1


def test_a07_reset_on_request_hits_only_matching_requests_within_budget(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    proxy.update(reset_on_request=b"MARK", reset_budget=1)
    with connect(proxy.port) as sock:
        sock.sendall(b"plain")
        assert recv_exactly(sock, 5) == b"plain"
        sock.sendall(b"MARK1")
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    assert b"MARK1" in upstream.received  # the upstream processed it; the answer was lost
    with connect(proxy.port) as sock:  # budget spent: the next one goes through
        sock.sendall(b"MARK2")
        assert recv_exactly(sock, 5) == b"MARK2"
    assert proxy.toxics().reset_budget == 0
    assert proxy.stats().resets == 1


def test_timeout_accepts_and_never_answers_then_resets_on_clear(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    proxy.update(timeout=True)
    with connect(proxy.port) as sock:
        sock.sendall(b"hello")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.settimeout(IO_TIMEOUT)
        proxy.clear()
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    assert upstream.accepted == 0
    assert proxy.stats().swallowed_bytes == 5


def test_down_refuses_and_resets_then_up_on_the_same_port(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    port = proxy.port
    held = connect(port)
    held.sendall(b"a")
    assert recv_exactly(held, 1) == b"a"
    proxy.update(down=True)
    with held, pytest.raises(ConnectionResetError):
        held.recv(10)
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    proxy.clear()
    assert proxy.port == port
    with connect(port) as sock:
        sock.sendall(b"again")
        assert recv_exactly(sock, 5) == b"again"


def test_invalid_toxics_are_typed_errors(proxy: FaultProxy) -> None:
    with pytest.raises(FaultProxyError):
        Toxics(bandwidth=0)
    with pytest.raises(FaultProxyError):
        Toxics(latency_ms=-1)
    with pytest.raises(FaultProxyError):
        Toxics(reset_on_request=b"")
    with pytest.raises(FaultProxyError):
        proxy.update(no_such_toxic=1)
    assert proxy.toxics() == Toxics()


def test_stopped_proxy_refuses_control_and_connections(upstream: Upstream) -> None:
    proxy = FaultProxy("127.0.0.1", upstream.port)
    with pytest.raises(FaultProxyError):
        proxy.clear()
    proxy.start()
    port = proxy.port
    held = connect(port)
    held.sendall(b"a")
    assert recv_exactly(held, 1) == b"a"
    proxy.stop()
    proxy.stop()  # idempotent
    with held, pytest.raises(ConnectionResetError):
        held.recv(10)
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    with pytest.raises(FaultProxyError):
        proxy.reset_all()


def test_tls_termination_sees_requests_and_verifies_upstream(tmp_path: Path) -> None:
    ca = Ca("fault proxy test CA")
    cert = ca.issue(cn="localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "cert.pem").write_bytes(cert.cert_pem)
    (tmp_path / "key.pem").write_bytes(cert.key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    tls_upstream = Upstream(server_ctx)
    try:
        with FaultProxy(
            "127.0.0.1", tls_upstream.port, tls=ProxyTls(server=server_ctx, client=client_ctx)
        ) as proxy:
            proxy.update(reset_on_request=b"grant_type=refresh_token", reset_budget=1)
            with client_ctx.wrap_socket(
                connect(proxy.port), server_hostname="127.0.0.1", suppress_ragged_eofs=False
            ) as sock:
                sock.sendall(b"grant_type=authorization_code")
                assert recv_exactly(sock, 29) == b"grant_type=authorization_code"
                sock.sendall(b"grant_type=refresh_token")
                with pytest.raises((ConnectionResetError, ssl.SSLError)):
                    sock.recv(100)
            assert b"grant_type=refresh_token" in tls_upstream.received
            assert proxy.stats().resets == 1
    finally:
        tls_upstream.close()
