"""ListGrants pagination (AIP-158): page size bounds, opaque page tokens, keyset pages.

Pages are cut over the grants the caller may see, ordered by ``grant_id``: a page token names
the last grant id of the previous page (a keyset cursor) and the label filter it was made for,
so grants created or revoked between pages never make another grant appear twice or be skipped.

The token is base64url (no padding) of ``v1 \\n label \\n last grant id``: opaque to callers,
validated strictly on the way in (any malformed, foreign-version or other-label token is
INVALID_ARGUMENT, never echoed back). It is not signed: it holds nothing the caller has not
already been shown, and a forged one only moves the start of the listing, whose every grant is
still filtered by the caller's policy. A signature would need a key shared by every replica (a
token minted by one must work on the next) for no gain.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from broker.errors import InvalidArgument
from broker.server import validation

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN_CHARS = 512
_VERSION = "v1"
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_INVALID = "page_token is invalid or was made for another request"

T = TypeVar("T")


def page_size(requested: int) -> int:
    """AIP-158: 0 means the default, above the maximum means the maximum, negative is an error."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_token(label: str | None, after: str) -> str:
    """The page token continuing after grant ``after`` for the filter ``label``."""
    raw = "\n".join((_VERSION, label or "", after)).encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_token(token: str, label: str | None) -> str | None:
    """The grant id a page token continues after; ``None`` for the first page (empty token).

    Raises :class:`InvalidArgument` unless the token is one :func:`encode_token` made for the
    same ``label``.
    """
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN_CHARS or _B64URL.fullmatch(token) is None:
        raise InvalidArgument(_INVALID)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument(_INVALID) from None
    parts = raw.split("\n")
    if len(parts) != 3 or parts[0] != _VERSION or parts[1] != (label or ""):
        raise InvalidArgument(_INVALID)
    try:
        after = validation.grant_id(parts[2])
    except InvalidArgument:
        raise InvalidArgument(_INVALID) from None
    if encode_token(label, after) != token:  # one spelling per token (no padding variants)
        raise InvalidArgument(_INVALID)
    return after


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_after: str | None
    """The key of the last item when more follow, else ``None``."""


def cut_page(
    items: Iterable[T], key: Callable[[T], str], *, after: str | None, size: int
) -> Page[T]:
    """The ``size`` items with the smallest keys above ``after`` (keyset order by ``key``)."""
    ordered = sorted((i for i in items if after is None or key(i) > after), key=key)
    page = ordered[:size]
    more = len(ordered) > size
    return Page(page, key(page[-1]) if more and page else None)
