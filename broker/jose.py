"""Compact JWS (RFC 7515) over any :class:`broker.keys.api.Signer`.

Assembly is a pure function of the header, the claims and the signer; the private key never
leaves the signer (the HSM). ES256 signatures are the raw 64-byte r||s (RFC 7518 section 3.4).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import Any

from broker.keys.api import Signer


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _segment(obj: Mapping[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":"), sort_keys=False).encode("utf-8"))


def signing_input(header: Mapping[str, Any], claims: Mapping[str, Any]) -> bytes:
    return f"{_segment(header)}.{_segment(claims)}".encode("ascii")


def sign_compact(
    signer: Signer, claims: Mapping[str, Any], *, typ: str | None = "JWT", extra_header: Mapping[str, Any] | None = None
) -> str:
    """Return ``header.payload.signature`` signed by ``signer`` with ``kid`` = its kid."""
    header: dict[str, Any] = {"alg": signer.alg}
    if typ is not None:
        header["typ"] = typ
    header["kid"] = signer.kid
    if extra_header:
        header.update(extra_header)
    data = signing_input(header, claims)
    signature = signer.sign(data)
    return f"{data.decode('ascii')}.{b64url(signature)}"


async def sign_compact_async(
    signer: Signer, claims: Mapping[str, Any], *, typ: str | None = "JWT", extra_header: Mapping[str, Any] | None = None
) -> str:
    """:func:`sign_compact` in a worker thread: HSM calls never block the event loop."""
    return await asyncio.to_thread(sign_compact, signer, claims, typ=typ, extra_header=extra_header)


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decode header and claims WITHOUT verifying (for tests and diagnostics only)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header = json.loads(b64url_decode(parts[0]))
    claims = json.loads(b64url_decode(parts[1]))
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("JWS header and payload must be JSON objects")
    return header, claims
