"""ES256 with a key that stays in the token: :class:`Pkcs11Signer`.

RFC 7518 section 3.4: SHA-256 then ``CKM_ECDSA`` over the digest, or ``CKM_ECDSA_SHA256`` over
the message when the token offers it; the output is the raw 64-byte r||s.

Threads (D08): a synchronous :meth:`Pkcs11Signer.sign` from a caller's thread makes one hop into
the health's worker pool when an operation timeout is set, so a stuck device call cannot hold
the caller. Async callers use :attr:`Pkcs11Signer.offload` (see
:func:`broker.jose.sign_compact_async`): their whole signature, metrics included, runs in that
worker, and the bound inside it runs inline, so an async signature makes exactly one hop.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pkcs11 import Mechanism

from broker.errors import InvalidKey
from broker.keys.api import ES256, Offload
from broker.keys.pkcs11.session import Pkcs11Session

_SHA256 = hashlib.sha256


class Pkcs11Signer:
    """ES256 with a key that stays in the token. ``kid`` = the key's bare did:key."""

    def __init__(
        self,
        session: Pkcs11Session,
        label: str,
        kid: str,
        mechanism: Mechanism,
        *,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._session = session
        self._label = label
        self._kid = kid
        self._mechanism = mechanism
        self._prehash = mechanism is not Mechanism.ECDSA_SHA256
        self._mechanism_name = "CKM_ECDSA" if self._prehash else "CKM_ECDSA_SHA256"
        self._span_attributes = {"kid": kid, "mechanism": self._mechanism_name}
        self._tracer = tracer or trace.get_tracer("broker.keys")

    def __repr__(self) -> str:
        return (
            f"Pkcs11Signer(label={self._label!r}, kid={self._kid!r}, mechanism={self.mechanism!r})"
        )

    @property
    def label(self) -> str:
        return self._label

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def alg(self) -> str:
        return ES256

    @property
    def mechanism(self) -> str:
        return self._mechanism_name

    @property
    def offload(self) -> Offload | None:
        """Where async callers run this signer's blocking work: the health's bounded worker
        pool, or None (no health: the caller picks a thread)."""
        return self._session.health

    def sign(self, message: bytes) -> bytes:
        """The JOSE ES256 signature of ``message``: raw r||s, 64 bytes (RFC 7518 section 3.4)."""
        # start_span, not start_as_current_span: nothing nests below this span, and skipping the
        # context attach/detach halves the tracing cost on the signing hot path.
        span = self._tracer.start_span("keys.sign", attributes=self._span_attributes)
        try:
            data = _SHA256(message).digest() if self._prehash else message
            health = self._session.health
            if health is None:
                signature = self._session.run("sign", functools.partial(self._c_sign, data))
            else:  # one hop into its bounded worker, or inline when already on it
                signature = health.bounded("sign", functools.partial(self._run_sign, data))
            if len(signature) != 64:
                raise InvalidKey(f"token returned a {len(signature)}-byte ECDSA signature, not 64")
            return signature
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    def _c_sign(self, data: bytes, session: Any) -> bytes:
        """``C_Sign`` over ``data`` in the store's session (inside :meth:`Pkcs11Session.run`)."""
        key = self._session.private_ec(session, self._label)
        return bytes(key.sign(data, mechanism=self._mechanism))

    def _run_sign(self, data: bytes) -> bytes:
        return self._session.run("sign", functools.partial(self._c_sign, data))
