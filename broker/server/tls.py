"""The gRPC server's TLS: mutual-TLS server credentials and the live reload of certificate, key
and client-CA bundle (TEST-CATALOGUE E01-E03, E09). The rules the files must meet are in
:mod:`broker.server.certificates`."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from broker.errors import ConfigError
from broker.server.certificates import check_client_ca_bundle, check_server_pair

# Reload lines keep the logger name they had in the wiring module (log filters).
log = logging.getLogger("broker.server.app")


class ServerTlsReloader:
    """Server certificate, key and client CA bundle re-read without a restart (TEST-CATALOGUE E09).

    gRPC calls :meth:`fetch` before each new TLS handshake (``dynamic_ssl_server_credentials``).
    At most every ``poll_interval`` seconds it compares the files' mtime/size/inode with the last
    attempt and, when they changed, loads and checks them: new handshakes then use the new
    certificate and trust only the new CA bundle (a client of a removed CA is refused), while
    established connections and in-flight RPCs go on. A broken set of files keeps the previous
    one and logs an error (no file contents, no paths of secrets beyond the names given).
    """

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        client_ca_path: Path,
        *,
        poll_interval: float = 2.0,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._paths = (cert_path, key_path, client_ca_path)
        self._poll_interval = poll_interval
        self._monotonic = monotonic or time.monotonic
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._pems = self._load()
        self._checked_at = self._monotonic()
        self.generation = 1  # successful loads
        self.failures = 0  # reloads refused (the previous files stay in force)

    @property
    def server_cert_pem(self) -> bytes:
        return self._pems[0]

    @property
    def client_ca_pem(self) -> bytes:
        return self._pems[2]

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _load(self) -> tuple[bytes, bytes, bytes]:
        try:
            cert, key, ca = (path.read_bytes() for path in self._paths)
        except OSError as exc:
            raise ConfigError(f"TLS files unreadable ({type(exc).__name__})") from exc
        check_server_pair(cert, key)
        check_client_ca_bundle(ca)
        return cert, key, ca

    def configuration(self) -> Any:
        """The current files as a ``grpc.ServerCertificateConfiguration``."""
        cert, key, ca = self._pems
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def reload(self) -> bool:
        """Re-read the files now. True if the new ones are in force; on error keep the old."""
        with self._lock:
            self._stamp = self._stat()
            try:
                pems = self._load()
            except ConfigError as exc:
                self.failures += 1
                log.error("TLS reload failed, keeping the previous certificates: %s", exc.message)
                return False
            self._pems = pems
            self.generation += 1
        log.info("TLS certificates reloaded (generation %d)", self.generation)
        return True

    def poll(self) -> bool:
        """Reload if the files changed since the last attempt. True if a reload succeeded."""
        if self._stat() == self._stamp:
            return False
        return self.reload()

    def fetch(self) -> Any:
        """gRPC's certificate fetcher: a new configuration, or None to keep the current one."""
        now = self._monotonic()
        if now - self._checked_at < self._poll_interval:
            return None
        self._checked_at = now
        try:
            changed = self.poll()
        except Exception:  # never break handshakes: the current configuration stays
            log.exception("TLS reload check failed")
            return None
        return self.configuration() if changed else None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.configuration(), self.fetch, require_client_authentication=True
        )


def server_credentials(
    server_cert_pem: bytes, server_key_pem: bytes, client_ca_pem: bytes
) -> grpc.ServerCredentials:
    """Fixed mutual-TLS credentials: client certificates required, checked against the bundle."""
    return grpc.ssl_server_credentials(
        [(server_key_pem, server_cert_pem)],
        root_certificates=client_ca_pem,
        require_client_auth=True,
    )
