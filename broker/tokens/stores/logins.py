"""Pending interactive logins at rest: the record, its sealing, the store role, a memory store.

A login in flight lives in the grant store (SQLite or PostgreSQL; :class:`MemoryLoginStore`
for one process and the contract suite), so that any replica serves its ``request_uri`` and
completes its callback, and a restart of the replica that started it forgets nothing.

What is kept in clear: the login id, owner, label, status, expiry, restart count, result
grant id or failure reason, and two lookup keys: the SHA-256 of the ``state`` and of the
``request_uri`` reference (both capabilities: the raw values are never stored). The secrets
(nonce, PKCE verifier, request object, authorization URL, which carries state and nonce) are
one sealed blob whose associated data binds it to the login id (:func:`secrets_aad`).

Status: ``pending`` -> ``exchanging`` (claimed by exactly one callback, compare-and-set in
the store) -> ``completed`` | ``failed``, or back to ``pending`` with new secrets (a restart);
``pending`` -> ``expired`` once past ``expires_at``. Finished logins are deleted after a
retention time (:meth:`LoginStore.prune_logins`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.errors import KeyStoreError, StoreError
from broker.keys.api import Sealer
from broker.tokens.stores.base import GrantStore

_AAD_PREFIX = b"broker.login.v1\x00"
SECRETS_FIELD = "secrets"

#: Columns of a login row, shared by the SQL stores (lookup keys and sealed blob are bytes).
LOGIN_COLUMNS: tuple[str, ...] = (
    "login_id",
    "owner",
    "label",
    "status",
    "state_key",
    "ref_key",
    "secrets",
    "expires_at",
    "restarts",
    "grant_id",
    "error",
    "created_at",
    "finished_at",
    "seal_key",
)


class LoginStatus(enum.StrEnum):
    PENDING = "pending"
    EXCHANGING = "exchanging"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


FINISHED = frozenset({LoginStatus.COMPLETED, LoginStatus.FAILED, LoginStatus.EXPIRED})


@dataclass(frozen=True)
class LoginSecrets:
    """What a login needs to finish and nothing may read: kept out of every ``repr``."""

    nonce: str = field(repr=False)
    code_verifier: str | None = field(repr=False)
    request_object: str = field(repr=False)
    authorization_url: str = field(repr=False)

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes, login_id: str) -> LoginSecrets:
        try:
            values = json.loads(raw)
            return cls(
                nonce=str(values["nonce"]),
                code_verifier=None
                if values["code_verifier"] is None
                else str(values["code_verifier"]),
                request_object=str(values["request_object"]),
                authorization_url=str(values["authorization_url"]),
            )
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"login {login_id!r} has undecodable secrets") from None


@dataclass(frozen=True)
class LoginRecord:
    """One login as the store keeps it (secrets open)."""

    login_id: str
    label: str
    owner: str | None
    status: LoginStatus
    state_key: bytes | None = field(repr=False)
    ref_key: bytes | None = field(repr=False)
    secrets: LoginSecrets | None = field(repr=False)
    expires_at: float
    created_at: float
    restarts: int = 0
    grant_id: str | None = None
    error: str | None = None
    finished_at: float | None = None


def secrets_aad(login_id: str) -> bytes:
    """Associated data of a login's sealed secrets: a fixed prefix, the login id, the field."""
    return _AAD_PREFIX + login_id.encode() + b"\x00" + SECRETS_FIELD.encode()


def seal_secrets(sealer: Sealer, login_id: str, secrets: LoginSecrets | None) -> bytes | None:
    if secrets is None:
        return None
    return sealer.seal(secrets.encode(), secrets_aad(login_id))


def open_secrets(sealer: Sealer, login_id: str, sealed: bytes | None) -> LoginSecrets | None:
    if sealed is None:
        return None
    try:
        raw = sealer.open(bytes(sealed), secrets_aad(login_id))
    except KeyStoreError as exc:
        exc.add_note(f"while opening the secrets of login {login_id!r}")
        raise
    except Exception as exc:
        raise KeyStoreError(
            f"could not open the secrets of login {login_id!r}: {type(exc).__name__}"
        ) from exc
    return LoginSecrets.decode(raw, login_id)


def record_values(sealer: Sealer, record: LoginRecord) -> tuple[object, ...]:
    """A record as a row in :data:`LOGIN_COLUMNS` order (secrets sealed)."""
    return (
        record.login_id,
        record.owner,
        record.label,
        record.status.value,
        record.state_key,
        record.ref_key,
        seal_secrets(sealer, record.login_id, record.secrets),
        float(record.expires_at),
        int(record.restarts),
        record.grant_id,
        record.error,
        float(record.created_at),
        None if record.finished_at is None else float(record.finished_at),
        sealer.key_label,
    )


def record_from_values(sealer: Sealer, values: Sequence[Any]) -> LoginRecord:
    if len(values) != len(LOGIN_COLUMNS):
        raise StoreError("login row has an unexpected shape")
    row: dict[str, Any] = dict(zip(LOGIN_COLUMNS, values, strict=True))
    login_id = str(row["login_id"])
    try:
        status = LoginStatus(str(row["status"]))
    except ValueError:
        raise StoreError(f"login {login_id!r} has an unknown stored status") from None
    sealed = row["secrets"]
    finished = row["finished_at"]
    return LoginRecord(
        login_id=login_id,
        label=str(row["label"]),
        owner=None if row["owner"] is None else str(row["owner"]),
        status=status,
        state_key=None if row["state_key"] is None else bytes(row["state_key"]),
        ref_key=None if row["ref_key"] is None else bytes(row["ref_key"]),
        secrets=open_secrets(sealer, login_id, None if sealed is None else bytes(sealed)),
        expires_at=float(row["expires_at"]),
        created_at=float(row["created_at"]),
        restarts=int(row["restarts"]),
        grant_id=None if row["grant_id"] is None else str(row["grant_id"]),
        error=None if row["error"] is None else str(row["error"]),
        finished_at=None if finished is None else float(finished),
    )


class LoginStore(Protocol):
    """Pending logins, shared by every replica that opens the same store.

    Every state change is a compare-and-set on the stored status, so two replicas acting on
    one login at once find exactly one winner."""

    async def add_login(self, record: LoginRecord) -> None:
        """Insert a new login (``login_id`` unique)."""
        ...

    async def login_by_id(self, login_id: str) -> LoginRecord | None: ...

    async def login_by_state(self, state_key: bytes) -> LoginRecord | None:
        """The ``pending`` or ``expired`` login with this state digest (a consumed state finds
        nothing)."""
        ...

    async def login_by_ref(self, ref_key: bytes) -> LoginRecord | None:
        """The ``pending`` login with this request_uri digest."""
        ...

    async def claim_login(self, login_id: str, state_key: bytes, now: float) -> LoginRecord | None:
        """Atomically move the login from ``pending`` (with this state, not expired at ``now``)
        to ``exchanging``; the claimed record, or ``None`` when another caller won or the state
        no longer matches."""
        ...

    async def restart_login(self, record: LoginRecord) -> bool:
        """Put an ``exchanging`` login back to ``pending`` with ``record``'s new lookup keys,
        secrets, expiry and restart count. False when it is not ``exchanging`` any more."""
        ...

    async def finish_login(
        self,
        login_id: str,
        status: LoginStatus,
        *,
        now: float,
        grant_id: str | None = None,
        error: str | None = None,
        expected: LoginStatus,
    ) -> bool:
        """Move the login from ``expected`` to a finished ``status``; drops its secrets and
        request_uri key (and its state key, except for ``expired``: a late callback is told
        "expired"). False when it was not in ``expected``."""
        ...

    async def count_pending_logins(self, now: float) -> int: ...

    async def prune_logins(self, now: float, *, retention: float, exchange_timeout: float) -> int:
        """Expire pending logins past their expiry, fail exchanges claimed by a replica that
        never finished them (``exchange_timeout`` after expiry), delete logins finished more
        than ``retention`` ago. Returns the number of rows changed or deleted."""
        ...


class GrantAndLoginStore(GrantStore, LoginStore, Protocol):
    """A grant store that also keeps pending logins (SQLite and PostgreSQL)."""


class MemoryLoginStore:
    """:class:`LoginStore` in a dict (one process; what the SQL stores do, without sealing)."""

    def __init__(self) -> None:
        self._logins: dict[str, LoginRecord] = {}
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"MemoryLoginStore(logins={len(self._logins)})"

    async def add_login(self, record: LoginRecord) -> None:
        async with self._lock:
            if record.login_id in self._logins:
                raise StoreError(f"login {record.login_id!r} already exists")
            self._logins[record.login_id] = record

    async def login_by_id(self, login_id: str) -> LoginRecord | None:
        return self._logins.get(login_id)

    async def login_by_state(self, state_key: bytes) -> LoginRecord | None:
        for record in self._logins.values():
            if record.state_key == state_key and record.status in (
                LoginStatus.PENDING,
                LoginStatus.EXPIRED,
            ):
                return record
        return None

    async def login_by_ref(self, ref_key: bytes) -> LoginRecord | None:
        for record in self._logins.values():
            if record.ref_key == ref_key and record.status is LoginStatus.PENDING:
                return record
        return None

    async def claim_login(self, login_id: str, state_key: bytes, now: float) -> LoginRecord | None:
        async with self._lock:
            record = self._logins.get(login_id)
            if (
                record is None
                or record.status is not LoginStatus.PENDING
                or record.state_key != state_key
                or now >= record.expires_at
            ):
                return None
            claimed = dataclasses.replace(record, status=LoginStatus.EXCHANGING)
            self._logins[login_id] = claimed
            return claimed

    async def restart_login(self, record: LoginRecord) -> bool:
        async with self._lock:
            current = self._logins.get(record.login_id)
            if current is None or current.status is not LoginStatus.EXCHANGING:
                return False
            self._logins[record.login_id] = dataclasses.replace(
                current,
                status=LoginStatus.PENDING,
                state_key=record.state_key,
                ref_key=record.ref_key,
                secrets=record.secrets,
                expires_at=record.expires_at,
                restarts=record.restarts,
            )
            return True

    async def finish_login(
        self,
        login_id: str,
        status: LoginStatus,
        *,
        now: float,
        grant_id: str | None = None,
        error: str | None = None,
        expected: LoginStatus,
    ) -> bool:
        if status not in FINISHED:
            raise StoreError("finish_login needs a finished status")
        async with self._lock:
            current = self._logins.get(login_id)
            if current is None or current.status is not expected:
                return False
            self._logins[login_id] = dataclasses.replace(
                current,
                status=status,
                state_key=current.state_key if status is LoginStatus.EXPIRED else None,
                ref_key=None,
                secrets=None,
                grant_id=grant_id,
                error=error,
                finished_at=now,
            )
            return True

    async def count_pending_logins(self, now: float) -> int:
        return sum(
            1
            for r in self._logins.values()
            if r.status is LoginStatus.PENDING and now < r.expires_at
        )

    async def prune_logins(self, now: float, *, retention: float, exchange_timeout: float) -> int:
        changed = 0
        async with self._lock:
            for login_id, stored in list(self._logins.items()):
                r = stored
                if r.status is LoginStatus.PENDING and now >= r.expires_at:
                    r = dataclasses.replace(
                        r,
                        status=LoginStatus.EXPIRED,
                        ref_key=None,
                        secrets=None,
                        error="login_expired",
                        finished_at=now,
                    )
                    self._logins[login_id] = r
                    changed += 1
                elif r.status is LoginStatus.EXCHANGING and now >= r.expires_at + exchange_timeout:
                    r = dataclasses.replace(
                        r,
                        status=LoginStatus.FAILED,
                        state_key=None,
                        ref_key=None,
                        secrets=None,
                        error="exchange_interrupted",
                        finished_at=now,
                    )
                    self._logins[login_id] = r
                    changed += 1
                if r.finished_at is not None and now - r.finished_at >= retention:
                    del self._logins[login_id]
                    changed += 1
        return changed
