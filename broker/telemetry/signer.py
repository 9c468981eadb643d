"""A :class:`~broker.keys.api.Signer` decorator recording ``broker.hsm.sign.duration`` and
``broker.hsm.sign.errors`` (wired by ``broker serve`` around the HSM signer)."""

from __future__ import annotations

from broker.clock import Clock
from broker.errors import BrokerError
from broker.keys.api import Offload, Signer, offload_of
from broker.telemetry.metrics import BrokerMetrics


class MeteredSigner:
    """Delegates to ``inner``; each signature's duration (``clock.monotonic``) is recorded by
    mechanism, each failure counted by its ``reason`` code (or class name; never its message)."""

    def __init__(self, inner: Signer, metrics: BrokerMetrics, clock: Clock) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock

    def __repr__(self) -> str:
        return f"MeteredSigner({self._inner!r})"

    @property
    def kid(self) -> str:
        return self._inner.kid

    @property
    def alg(self) -> str:
        return self._inner.alg

    @property
    def mechanism(self) -> str:
        return self._inner.mechanism

    @property
    def offload(self) -> Offload | None:
        """The inner signer's worker: async signatures run there, this recording included."""
        return offload_of(self._inner)

    def sign(self, message: bytes) -> bytes:
        started = self._clock.monotonic()
        try:
            signature = self._inner.sign(message)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, BrokerError) else type(exc).__name__
            self._metrics.record_sign_error(reason)
            raise
        self._metrics.record_sign(self._clock.monotonic() - started, self._inner.mechanism)
        return signature
