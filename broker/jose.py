"""Compact JWS (RFC 7515) over any :class:`broker.keys.api.Signer`.

Assembly is a pure function of the header, the claims and the signer; the private key never
leaves the signer (the HSM). ES256 signatures are the raw 64-byte r||s (RFC 7518 section 3.4).

Hot path (every client assertion and request object): the encoded protected header depends only on
(alg, kid, typ, extra header), so its base64url segment is memoised (a bounded, pure LRU memo: the
same inputs always give the same bytes); the claims are encoded with one pre-built compact JSON
encoder and base64url is done on bytes, without str round trips.

Decoding (JWTs from the authorization server): the compact size is checked before splitting, each
segment must be unpadded base64url (RFC 7515 section 2), and header and claims are parsed with the
strict loader of :mod:`broker.strict_json` (no duplicate names, bounded depth, UTF-8 only).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import re
from collections.abc import Hashable, Mapping
from typing import Any

from broker import strict_json
from broker.keys.api import Signer, offload_of

# Immutable helpers (no state): the compact encoder json.dumps(separators=...) would build per call,
# and the standard -> URL-safe base64 alphabet translation.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
# The C encoder factory JSONEncoder.encode ends in: calling it directly skips encode's and
# iterencode's per-call Python work (half the cost of encoding a claims set). Each call gets
# fresh ``markers`` (circular references are still refused, and threads share nothing).
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_HEADER_CACHE_SIZE = 64
_B64URL_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def _b64url_bytes(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_TO_URLSAFE)


def b64url(data: bytes) -> str:
    return _b64url_bytes(data).decode("ascii")


def b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def b64url_decode_strict(segment: str) -> bytes:
    """Unpadded base64url (RFC 7515 section 2) only: padding, ``+``, ``/``, whitespace or any
    other character, an empty segment and an impossible length raise :class:`ValueError`."""
    if not _B64URL_SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("segment is not unpadded base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def check_compact_size(token: str, max_bytes: int = strict_json.JWT_MAX_BYTES) -> None:
    """Refuse a compact JWS longer than ``max_bytes`` before anything splits or decodes it
    (:class:`broker.strict_json.InvalidJson`, reason ``too_large``)."""
    if len(token) > max_bytes:
        raise strict_json.InvalidJson(
            f"compact JWS of {len(token)} characters exceeds the {max_bytes}-byte limit",
            reason="too_large",
        )


def decode_json_segment(
    segment: str, limits: strict_json.JsonLimits = strict_json.JWT_LIMITS
) -> dict[str, Any]:
    """A JWS header or payload segment as a JSON object, parsed strictly; :class:`ValueError`
    (:class:`broker.strict_json.InvalidJson` for the JSON part) otherwise."""
    return strict_json.loads_object(b64url_decode_strict(segment), limits)


def _compact_json(obj: Mapping[str, Any]) -> str:
    """``_COMPACT_JSON.encode(obj)``, the same text, through the C encoder when there is one."""
    if _C_MAKE_ENCODER is None:
        return _COMPACT_JSON.encode(obj)
    encoder = _C_MAKE_ENCODER(
        {},  # markers: circular-reference check, as JSONEncoder(check_circular=True)
        _COMPACT_JSON.default,
        json.encoder.encode_basestring_ascii,  # ensure_ascii=True
        None,  # indent
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )
    return "".join(encoder(obj, 0))


def _segment_bytes(obj: Mapping[str, Any]) -> bytes:
    # ensure_ascii (the default) makes the JSON text pure ASCII: encoding it cannot fail.
    return _b64url_bytes(_compact_json(obj).encode("ascii"))


def _segment(obj: Mapping[str, Any]) -> str:
    return _segment_bytes(obj).decode("ascii")


def signing_input(header: Mapping[str, Any], claims: Mapping[str, Any]) -> bytes:
    return _segment_bytes(header) + b"." + _segment_bytes(claims)


def _build_header(
    alg: str, kid: str, typ: str | None, extra_header: Mapping[str, Any] | None
) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": alg}
    if typ is not None:
        header["typ"] = typ
    header["kid"] = kid
    if extra_header:
        header.update(extra_header)
    return header


# Value types whose (type, value) pair identifies the JSON text exactly (1, 1.0 and True are equal
# as dict keys but encode differently, hence the type in the memo key).
_SCALARS = (str, int, float, bool, type(None))


@functools.lru_cache(maxsize=_HEADER_CACHE_SIZE)
def _cached_header_segment(
    alg: str, kid: str, typ: str | None, extra_items: tuple[tuple[str, type, Hashable], ...]
) -> bytes:
    return _segment_bytes(_build_header(alg, kid, typ, {k: v for k, _, v in extra_items}))


def header_segment(
    alg: str, kid: str, typ: str | None = "JWT", extra_header: Mapping[str, Any] | None = None
) -> bytes:
    """The base64url protected-header segment ``{"alg", "typ"?, "kid", **extra_header}``.

    Memoised per (alg, kid, typ, extra header) when the extra header holds only string keys and
    scalar values; the result is byte-identical to encoding the header afresh.
    """
    if not extra_header:
        return _cached_header_segment(alg, kid, typ, ())
    items = tuple((k, type(v), v) for k, v in extra_header.items())
    if all(type(k) is str and t in _SCALARS for k, t, _ in items):
        return _cached_header_segment(alg, kid, typ, items)
    return _segment_bytes(_build_header(alg, kid, typ, extra_header))


def sign_compact(
    signer: Signer,
    claims: Mapping[str, Any],
    *,
    typ: str | None = "JWT",
    extra_header: Mapping[str, Any] | None = None,
) -> str:
    """Return ``header.payload.signature`` signed by ``signer`` with ``kid`` = its kid."""
    data = header_segment(signer.alg, signer.kid, typ, extra_header) + b"." + _segment_bytes(claims)
    signature = signer.sign(data)
    return (data + b"." + _b64url_bytes(signature)).decode("ascii")


async def sign_compact_async(
    signer: Signer,
    claims: Mapping[str, Any],
    *,
    typ: str | None = "JWT",
    extra_header: Mapping[str, Any] | None = None,
) -> str:
    """:func:`sign_compact` in a worker thread: HSM calls never block the event loop.

    Exactly one thread hop: the signer's own bounded worker when it has one
    (:func:`broker.keys.api.offload_of`; the HSM's per-operation timeout applies there and the
    signature, its metrics and its ``C_Sign`` all run on that worker), else the default executor.
    """
    call = functools.partial(sign_compact, signer, claims, typ=typ, extra_header=extra_header)
    offload = offload_of(signer)
    if offload is None:
        return await asyncio.to_thread(call)
    return await offload.run_async("sign", call)


def unverified_parts(
    token: str, *, max_bytes: int = strict_json.JWT_MAX_BYTES
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decode header and claims WITHOUT verifying (for tests and diagnostics only), with the
    same size check and strict parsing as verified tokens; :class:`ValueError` otherwise."""
    check_compact_size(token, max_bytes)
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    return decode_json_segment(parts[0]), decode_json_segment(parts[1])
