"""``broker.credential.expiry``: seconds until the stored machine credential expires.

The file is read again only when it changes (inode, size, mtime), so a ``keys credential
import --replace`` shows up without a restart. Nothing is reported while no credential is
stored or the stored one cannot be parsed (``broker doctor`` says why).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from opentelemetry import metrics as otel_metrics

from broker.clock import Clock
from broker.credentials.lear import LearCredentialMachine
from broker.credentials.store import load_credential
from broker.errors import CredentialError
from broker.telemetry import instruments


class CredentialExpiry:
    """The stored credential's ``valid_until``, re-read when the file changes."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self._path = path
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self._until: datetime | None = None

    def _load(self) -> datetime | None:
        try:
            st = os.stat(self._path)
        except OSError:
            self._stamp, self._until = None, None
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                cred: LearCredentialMachine = load_credential(self._path)
                self._until = cred.valid_until
            except CredentialError:
                self._until = None
        return self._until

    def seconds_left(self) -> float | None:
        until = self._load()
        return None if until is None else until.timestamp() - self._clock.now()


def credential_gauge(
    meter_provider: otel_metrics.MeterProvider | None, path: Path, clock: Clock
) -> CredentialExpiry:
    """Register ``broker.credential.expiry`` over the credential at ``path``."""
    expiry = CredentialExpiry(path, clock)
    meter = otel_metrics.get_meter("broker.credentials", meter_provider=meter_provider)
    instruments.create(
        meter,
        instruments.CREDENTIAL_EXPIRY,
        callbacks=[instruments.single_value(expiry.seconds_left)],
    )
    return expiry
