"""Grants at rest: sealing of the secret fields, and the clear metadata every store lists.

The access token, the refresh token and the id_token claims (PII) are stored as
``sealer.seal(plaintext, aad)`` blobs where ``aad`` binds the blob to its grant and field
(:func:`field_aad`): a blob copied into another row or column does not open. Everything needed
to list grants (label, subject, status, expiry, version) stays in clear.

A :class:`SealedRow` is the at-rest form of a :class:`broker.tokens.model.Grant`; the SQL stores
map it to and from their rows. :func:`rotation_update` computes the columns a rotation writes.
What a store is given is checked first by :mod:`broker.tokens.stores.validation`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from broker.errors import KeyStoreError, StoreError
from broker.keys.api import Sealer
from broker.oauth.types import TokenSet
from broker.tokens.model import Grant, GrantExpiry, GrantKind, GrantStatus, GrantSummary
from broker.tokens.stores.validation import encode_claims, validate_grant, validate_tokens

ACCESS_TOKEN = "access_token"  # noqa: S105 (a field name)
REFRESH_TOKEN = "refresh_token"  # noqa: S105 (a field name)
ID_CLAIMS = "id_claims"

_AAD_PREFIX = b"broker.grant.v1\x00"

#: Column order of a grant row, shared by the SQL stores.
COLUMNS: tuple[str, ...] = (
    "grant_id",
    "label",
    "issuer",
    "client_id",
    "subject",
    "scope",
    "status",
    "access_token",
    "access_expires_at",
    "refresh_token",
    "id_claims",
    "created_at",
    "updated_at",
    "version",
    "refresh_started_at",
    "last_error",
    "seal_key",
    "access_issued_at",
    "refresh_expires_at",
    "kind",
)


def field_aad(grant_id: str, field_name: str) -> bytes:
    """Associated data of a sealed field: a fixed prefix, the grant id and the field name."""
    return _AAD_PREFIX + grant_id.encode() + b"\x00" + field_name.encode()


def seal_field(sealer: Sealer, grant_id: str, field_name: str, plaintext: bytes) -> bytes:
    return sealer.seal(plaintext, field_aad(grant_id, field_name))


def open_field(sealer: Sealer, grant_id: str, field_name: str, sealed: bytes) -> bytes:
    """Open one sealed field; a wrong key, context or tampering raises KeyStoreError."""
    try:
        return sealer.open(bytes(sealed), field_aad(grant_id, field_name))
    except KeyStoreError as exc:
        # Keep the class (HsmUnavailable stays retryable); say which value failed.
        exc.add_note(
            f"while opening {field_name} of grant {grant_id!r} (sealer {sealer.key_label})"
        )
        raise
    except Exception as exc:
        raise KeyStoreError(
            f"could not open {field_name} of grant {grant_id!r}: {type(exc).__name__}"
        ) from exc


# --- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedRow:
    """A grant as stored: secret fields sealed, the rest in clear."""

    grant_id: str
    label: str
    issuer: str
    client_id: str
    subject: str
    scope: str
    status: str
    access_token: bytes = field(repr=False)
    access_expires_at: float
    refresh_token: bytes | None = field(repr=False)
    id_claims: bytes = field(repr=False)
    created_at: float
    updated_at: float
    version: int
    refresh_started_at: float | None
    last_error: str | None
    seal_key: str
    access_issued_at: float | None = None
    refresh_expires_at: float | None = None
    kind: str = GrantKind.USER.value

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)

    @classmethod
    def from_values(cls, values: tuple[Any, ...] | list[Any]) -> SealedRow:
        if len(values) != len(COLUMNS):
            raise StoreError("grant row has an unexpected shape")
        row = dict(zip(COLUMNS, values, strict=True))
        for name in (ACCESS_TOKEN, REFRESH_TOKEN, ID_CLAIMS):
            if row[name] is not None:
                row[name] = bytes(row[name])
        return cls(**row)


def seal_grant(sealer: Sealer, grant: Grant) -> SealedRow:
    validate_grant(grant)
    gid = grant.grant_id
    return SealedRow(
        grant_id=gid,
        label=grant.label,
        issuer=grant.issuer,
        client_id=grant.client_id,
        subject=grant.subject,
        scope=grant.scope,
        status=grant.status.value,
        access_token=seal_field(sealer, gid, ACCESS_TOKEN, grant.access_token.encode()),
        access_expires_at=float(grant.access_expires_at),
        refresh_token=None
        if grant.refresh_token is None
        else seal_field(sealer, gid, REFRESH_TOKEN, grant.refresh_token.encode()),
        id_claims=seal_field(sealer, gid, ID_CLAIMS, encode_claims(grant.id_claims)),
        created_at=float(grant.created_at),
        updated_at=float(grant.updated_at),
        version=grant.version,
        refresh_started_at=None
        if grant.refresh_started_at is None
        else float(grant.refresh_started_at),
        last_error=grant.last_error,
        seal_key=sealer.key_label,
        access_issued_at=_optional_float(grant.access_issued_at),
        refresh_expires_at=_optional_float(grant.refresh_expires_at),
        kind=GrantKind(grant.kind).value,
    )


def open_grant(
    sealer: Sealer,
    row: SealedRow,
    *,
    known: TokenSet | None = None,
) -> Grant:
    """The grant of a stored row. ``known``: the tokens just written by a rotation, whose
    plaintext is in hand: those fields are taken from it instead of being opened again (a
    rotation that brought a new refresh token and id_token claims opens nothing)."""
    gid = row.grant_id
    try:
        status = GrantStatus(row.status)
    except ValueError:
        raise StoreError(f"grant {gid!r} has an unknown stored status") from None
    try:
        kind = GrantKind(row.kind)
    except ValueError:
        raise StoreError(f"grant {gid!r} has an unknown stored kind") from None
    if known is not None:
        access = known.access_token
    else:
        access = open_field(sealer, gid, ACCESS_TOKEN, row.access_token).decode()
    if known is not None and known.refresh_token is not None:
        refresh: str | None = known.refresh_token
    elif row.refresh_token is None:
        refresh = None
    else:
        refresh = open_field(sealer, gid, REFRESH_TOKEN, row.refresh_token).decode()
    if known is not None and known.id_claims:
        claims: Any = json.loads(encode_claims(known.id_claims))
    else:
        try:
            claims = json.loads(open_field(sealer, gid, ID_CLAIMS, row.id_claims))
        except ValueError:
            raise StoreError(f"grant {gid!r} has undecodable id_claims") from None
    if not isinstance(claims, dict):
        raise StoreError(f"grant {gid!r} has undecodable id_claims")
    return Grant(
        grant_id=gid,
        label=row.label,
        issuer=row.issuer,
        client_id=row.client_id,
        subject=row.subject,
        scope=row.scope,
        status=status,
        access_token=access,
        access_expires_at=float(row.access_expires_at),
        refresh_token=refresh,
        created_at=float(row.created_at),
        updated_at=float(row.updated_at),
        version=int(row.version),
        refresh_started_at=None
        if row.refresh_started_at is None
        else float(row.refresh_started_at),
        last_error=row.last_error,
        id_claims=claims,
        access_issued_at=_optional_float(row.access_issued_at),
        refresh_expires_at=_optional_float(row.refresh_expires_at),
        kind=kind,
    )


def opens_nothing(row: SealedRow, known: TokenSet | None) -> bool:
    """Whether :func:`open_grant` of ``row`` with ``known`` makes no sealer call (every sealed
    field is in ``known``, or absent): the caller may then run it without an HSM hop."""
    return (
        known is not None
        and (known.refresh_token is not None or row.refresh_token is None)
        and bool(known.id_claims)
    )


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def rotation_update(sealer: Sealer, grant_id: str, tokens: TokenSet, now: float) -> dict[str, Any]:
    """Columns a rotation writes (besides ``version = version + 1``), including the access
    token's issue time and the refresh token's expiry (see :mod:`broker.tokens.schedule`).

    The refresh token column is only written when the response carried a new one (RFC 6749
    section 6: otherwise the old one stays valid, A08a); scope and id_claims likewise.
    """
    validate_tokens(tokens)
    update: dict[str, Any] = {
        ACCESS_TOKEN: seal_field(sealer, grant_id, ACCESS_TOKEN, tokens.access_token.encode()),
        "access_expires_at": float(tokens.expires_at),
        "updated_at": float(now),
        "refresh_started_at": None,
        "last_error": None,
        "access_issued_at": float(tokens.received_at),
    }
    if tokens.refresh_token is not None:
        update[REFRESH_TOKEN] = seal_field(
            sealer, grant_id, REFRESH_TOKEN, tokens.refresh_token.encode()
        )
    if tokens.refresh_token is not None or tokens.refresh_expires_at is not None:
        # A new refresh token brings its own expiry (None: unknown); without one the old
        # token, and its expiry, stay unless the AS restated that expiry.
        update["refresh_expires_at"] = _optional_float(tokens.refresh_expires_at)
    if tokens.scope:
        update["scope"] = tokens.scope
    if tokens.id_claims:
        update[ID_CLAIMS] = seal_field(sealer, grant_id, ID_CLAIMS, encode_claims(tokens.id_claims))
    return update


def grant_expiry(values: tuple[Any, ...] | list[Any]) -> GrantExpiry:
    """A :class:`GrantExpiry` from (grant_id, access_expires_at, access_issued_at,
    refresh_expires_at) as the SQL stores select them."""
    grant_id, access_expires_at, issued, refresh_expires = values
    return GrantExpiry(
        grant_id=str(grant_id),
        access_expires_at=float(access_expires_at),
        access_issued_at=_optional_float(issued),
        refresh_expires_at=_optional_float(refresh_expires),
    )


# --- clear metadata (never opens a field) -------------------------------------------------------

#: Clear columns of a :class:`GrantSummary`, in its field order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "grant_id",
    "label",
    "issuer",
    "client_id",
    "subject",
    "scope",
    "status",
    "kind",
    "version",
    "access_expires_at",
    "access_issued_at",
    "refresh_expires_at",
    "refresh_started_at",
    "refresh_due_at",
    "created_at",
    "updated_at",
    "last_error",
    "claimed_by",
    "claim_until",
)


def grant_summary(values: tuple[Any, ...] | list[Any]) -> GrantSummary:
    """A :class:`GrantSummary` from the :data:`SUMMARY_COLUMNS` of a row."""
    if len(values) != len(SUMMARY_COLUMNS):
        raise StoreError("grant summary row has an unexpected shape")
    row = dict(zip(SUMMARY_COLUMNS, values, strict=True))
    gid = str(row["grant_id"])
    try:
        status = GrantStatus(row["status"])
        kind = GrantKind(row["kind"])
    except ValueError:
        raise StoreError(f"grant {gid!r} has an unknown stored status or kind") from None
    return GrantSummary(
        grant_id=gid,
        label=str(row["label"]),
        issuer=str(row["issuer"]),
        client_id=str(row["client_id"]),
        subject=str(row["subject"]),
        scope=str(row["scope"]),
        status=status,
        kind=kind,
        version=int(row["version"]),
        access_expires_at=float(row["access_expires_at"]),
        access_issued_at=_optional_float(row["access_issued_at"]),
        refresh_expires_at=_optional_float(row["refresh_expires_at"]),
        refresh_started_at=_optional_float(row["refresh_started_at"]),
        refresh_due_at=float(row["refresh_due_at"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        last_error=row["last_error"],
        claimed_by=row["claimed_by"],
        claim_until=_optional_float(row["claim_until"]),
    )
