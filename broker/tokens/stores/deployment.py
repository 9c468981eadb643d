"""The deployment a grant store belongs to, and the rules for binding a store to it.

A store records, when it is created, the identity of the deployment that created it: the
issuer (the AS its refresh tokens are for), our ``client_id`` at that issuer and our did:key
(in DOME they are the same string), and the schema version it was recorded at. The record is a
list, one row per identity, exactly one of them ``primary`` (the creating one); a later
key-rotation ceremony may add further rows (``how = "ceremony"``). A plain start never adds
one: on open the configured identity must equal one of the recorded rows, otherwise the store
is refused with :class:`broker.errors.DeploymentMismatch` naming both sides. A store sealed by
the same HSM key but created by another deployment therefore never starts, and none of its
refresh tokens reaches our AS.

A store that predates the identity record (schema version 1), or one opened before without an
identity, is *adopted* at its first open with an identity: the configured identity is recorded
(and logged) only when every grant in it already names the configured issuer and client_id
(grants have carried both since schema version 1). A store holding any grant of another issuer
or client is refused instead: adopting it would hand its refresh tokens to the wrong AS.

Everything here is public (issuer URL, client id, did:key): safe in logs and messages.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from broker.errors import DeploymentMismatch, InvalidArgument

_log = logging.getLogger("broker.tokens.stores.deployment")

MAX_IDENTITY_LENGTH = 4096


class IdentityRole(enum.StrEnum):
    PRIMARY = "primary"  # the identity that created (or adopted) the store: exactly one
    ADDED = "added"  # added later by a key-rotation ceremony


class IdentityState(enum.StrEnum):
    """Where an identity is in a key rotation (``broker keys rotate``).

    ``prepared``: its key exists and is registered as a client, but new logins do not use it
    yet; ``active``: new logins and machine grants use it (the configured ``[key] uri``);
    ``retiring``: replaced, its grants keep refreshing with its key until re-authorized;
    ``retired``: its key is destroyed, its grants need re-authorization. Every identity
    recorded before rotations existed is ``active``.
    """

    PREPARED = "prepared"
    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"

    @property
    def serves(self) -> bool:
        """Whether grants of an identity in this state are refreshed."""
        return self is not IdentityState.RETIRED


class RecordedHow(enum.StrEnum):
    CREATED = "created"  # recorded with a fresh store
    ADOPTED = "adopted"  # recorded at the first open of a store that had none
    CEREMONY = "ceremony"  # added by a key-rotation ceremony


def _check(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"deployment {name} must be a non-empty string")
    if len(value) > MAX_IDENTITY_LENGTH:
        raise InvalidArgument(f"deployment {name} is longer than {MAX_IDENTITY_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidArgument(f"deployment {name} contains control characters")
    return value


@dataclass(frozen=True)
class DeploymentIdentity:
    """Who a store belongs to: ``issuer``, our ``client_id`` there, our ``did`` (did:key)."""

    issuer: str
    client_id: str
    did: str

    def __post_init__(self) -> None:
        for name in ("issuer", "client_id", "did"):
            _check(name, getattr(self, name))

    def owns(self, issuer: str, client_id: str) -> bool:
        """True when a grant of ``issuer``/``client_id`` belongs to this identity."""
        return self.issuer == issuer and self.client_id == client_id

    def describe(self) -> str:
        if self.did == self.client_id:
            return f"issuer {self.issuer!r}, client_id/did {self.client_id!r}"
        return f"issuer {self.issuer!r}, client_id {self.client_id!r}, did {self.did!r}"


@dataclass(frozen=True)
class RecordedIdentity:
    """One row of a store's identity record."""

    identity: DeploymentIdentity
    role: IdentityRole
    how: RecordedHow
    schema_version: int
    recorded_at: float
    state: IdentityState = IdentityState.ACTIVE
    key_uri: str | None = None
    """The identity's key as a printable RFC 7512 URI (never a PIN); None when unknown."""


def grant_owner_text(issuer: str, client_id: str) -> str:
    return f"issuer {issuer!r}, client_id {client_id!r}"


def check_binding(
    recorded: Sequence[RecordedIdentity],
    configured: DeploymentIdentity,
    *,
    grant_owners: Collection[tuple[str, str]],
    where: str,
) -> bool:
    """Decide whether the store at ``where`` may be opened by ``configured``.

    Returns False when ``configured`` is already recorded (nothing to write), True when the
    store has no identity yet and ``configured`` is to be recorded (adoption: every grant
    belongs to it). Raises :class:`DeploymentMismatch` otherwise. ``grant_owners`` (the distinct
    issuer/client_id pairs of the stored grants) is only consulted when nothing is recorded.
    """
    if recorded:
        mine = next((r for r in recorded if r.identity == configured), None)
        if mine is not None and mine.state is IdentityState.RETIRED:
            raise DeploymentMismatch(
                f"the configured identity ({configured.describe()}) was retired in the grant "
                f"store {where} by 'broker keys rotate retire': its key is destroyed; set "
                "[key] uri to the active key"
            )
        if mine is not None:
            return False
        primary = next((r for r in recorded if r.role is IdentityRole.PRIMARY), recorded[0])
        others = len(recorded) - 1
        extra = f" (and {others} more recorded identit{'y' if others == 1 else 'ies'})"
        raise DeploymentMismatch(
            f"the grant store {where} belongs to another deployment: recorded "
            f"{primary.identity.describe()}{extra if others else ''}; this broker is configured "
            f"for {configured.describe()}. Refusing to open it (its refresh tokens are not for "
            "this issuer and client); point [store] at this deployment's store"
        )
    foreign = sorted(
        (issuer, client_id)
        for issuer, client_id in set(grant_owners)
        if not configured.owns(issuer, client_id)
    )
    if foreign:
        issuer, client_id = foreign[0]
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise DeploymentMismatch(
            f"the grant store {where} records no deployment identity and holds grants of "
            f"{grant_owner_text(issuer, client_id)}{more}; this broker is configured for "
            f"{configured.describe()}. Refusing to adopt it"
        )
    return True


def log_adoption(where: str, configured: DeploymentIdentity, grants: int) -> None:
    """The log line that says a store without an identity record was bound at this open."""
    _log.warning(
        "grant store %s had no deployment identity; recorded the configured one (%s) as its "
        "primary identity: all %d stored grants belong to it",
        where,
        configured.describe(),
        grants,
        extra={"issuer": configured.issuer, "client_id": configured.client_id},
    )


def check_grant_owner(
    allowed: Collection[DeploymentIdentity], issuer: str, client_id: str, grant_id: str
) -> None:
    """A store bound to ``allowed`` refuses a grant of any other issuer/client."""
    if allowed and not any(identity.owns(issuer, client_id) for identity in allowed):
        names = "; ".join(sorted(identity.describe() for identity in allowed))
        raise DeploymentMismatch(
            f"grant {grant_id!r} is of {grant_owner_text(issuer, client_id)}, but this grant "
            f"store belongs to {names}"
        )


#: Columns of the identity record (one row per identity), shared by the SQL stores.
IDENTITY_COLUMNS: tuple[str, ...] = (
    "issuer",
    "client_id",
    "did",
    "role",
    "how",
    "schema_version",
    "recorded_at",
    "state",
    "key_uri",
)


def identity_row(
    identity: DeploymentIdentity,
    role: IdentityRole,
    how: RecordedHow,
    schema_version: int,
    recorded_at: float,
    *,
    state: IdentityState = IdentityState.ACTIVE,
    key_uri: str | None = None,
) -> tuple[str, str, str, str, str, int, float, str, str | None]:
    return (
        identity.issuer,
        identity.client_id,
        identity.did,
        role.value,
        how.value,
        schema_version,
        float(recorded_at),
        state.value,
        key_uri,
    )


def recorded_from_row(values: Sequence[object]) -> RecordedIdentity:
    issuer, client_id, did, role, how, schema_version, recorded_at, state, key_uri = values
    return RecordedIdentity(
        identity=DeploymentIdentity(str(issuer), str(client_id), str(did)),
        role=IdentityRole(str(role)),
        how=RecordedHow(str(how)),
        schema_version=int(str(schema_version)),
        recorded_at=float(str(recorded_at)),
        state=IdentityState(str(state)),
        key_uri=None if key_uri is None else str(key_uri),
    )
