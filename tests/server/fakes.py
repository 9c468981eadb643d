"""In-memory stand-ins for the domain services the servicer adapts."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from broker.errors import GrantNotFound, LoginNotFound
from broker.tokens.model import Grant, GrantStatus


@dataclass(frozen=True)
class FakeToken:
    access_token: str = field(repr=False)
    expires_at: float
    scope: str
    subject: str
    grant_id: str
    token_type: str = "Bearer"


class LoginState(enum.Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True)
class FakeLogin:
    login_id: str
    label: str
    state: LoginState
    authorization_url: str
    expires_at: float
    grant_id: str | None = None
    error: str | None = None


def make_grant(grant_id: str, label: str) -> Grant:
    return Grant(
        grant_id=grant_id,
        label=label,
        issuer="https://verifier.example",
        client_id="did:key:zDnaeTest",
        subject="user-1",
        scope="openid learcredential",
        status=GrantStatus.ACTIVE,
        access_token="at-" + grant_id,
        access_expires_at=1_800_000_300.0,
        refresh_token="rt-" + grant_id,
        created_at=1_800_000_000.0,
        updated_at=1_800_000_000.0,
    )


class FakeBroker:
    """Grants in a dict; ``error`` is raised by every call; ``gate`` blocks token calls."""

    def __init__(self, *grants: Grant) -> None:
        self.grants = {g.grant_id: g for g in grants}
        self.error: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.calls: list[tuple[str, str, float | None]] = []
        self.updates: asyncio.Queue[FakeToken | None] = asyncio.Queue()
        self.revoked: list[str] = []

    def _grant(self, grant_id: str) -> Grant:
        if self.error is not None:
            raise self.error
        try:
            return self.grants[grant_id]
        except KeyError:
            raise GrantNotFound("grant not found") from None

    def token(self, grant_id: str, n: int = 0) -> FakeToken:
        g = self.grants[grant_id]
        return FakeToken(
            access_token=f"{g.access_token}-{n}",
            expires_at=g.access_expires_at + n,
            scope=g.scope,
            subject=g.subject,
            grant_id=grant_id,
        )

    async def get_access_token(self, grant_id: str, *, min_ttl: float) -> FakeToken:
        self.calls.append(("get_access_token", grant_id, min_ttl))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self._grant(grant_id)
        return self.token(grant_id)

    async def watch(self, grant_id: str) -> AsyncIterator[FakeToken]:
        self.calls.append(("watch", grant_id, None))
        self._grant(grant_id)
        yield self.token(grant_id)
        while (update := await self.updates.get()) is not None:
            yield update

    async def get_grant(self, grant_id: str) -> Grant:
        self.calls.append(("get_grant", grant_id, None))
        return self._grant(grant_id)

    async def list_grants(self, label: str | None) -> list[Grant]:
        self.calls.append(("list_grants", label or "", None))
        if self.error is not None:
            raise self.error
        return [g for g in self.grants.values() if label is None or g.label == label]

    async def revoke_grant(self, grant_id: str) -> None:
        self._grant(grant_id)
        self.revoked.append(grant_id)


class FakeLogins:
    """Logins in a dict, each with its owner; ``complete`` answers for ``login-1`` of its
    caller (it does not check states) and records its arguments."""

    def __init__(self) -> None:
        self.logins: dict[str, FakeLogin] = {}
        self.owners: dict[str, str] = {}
        self.completed: list[tuple[str | None, str, str | None, str | None]] = []
        self.error: BaseException | None = None

    async def start(self, *, label: str, owner: str) -> FakeLogin:
        if self.error is not None:
            raise self.error
        login_id = f"login-{len(self.logins) + 1}"
        view = FakeLogin(
            login_id=login_id,
            label=label,
            state=LoginState.PENDING,
            authorization_url=f"https://verifier.example/authorize?client_id=x&label={label}",
            expires_at=1_800_000_600.5,
        )
        self.logins[login_id] = view
        self.owners[login_id] = owner
        return view

    async def complete(
        self,
        *,
        code: str | None,
        state: str,
        iss: str | None,
        error: str | None = None,
        owner: str,
        authorize: Callable[[str], None],
    ) -> FakeLogin:
        if self.error is not None:
            raise self.error
        login = await self.get("login-1", owner=owner)
        authorize(login.label)
        self.completed.append((code, state, iss, error))
        view = FakeLogin(
            login_id=login.login_id,
            label=login.label,
            state=LoginState.FAILED if error else LoginState.COMPLETED,
            authorization_url="",
            expires_at=1_800_000_600.0,
            grant_id=None if error else "g-new",
            error=error,
        )
        self.logins[view.login_id] = view
        return view

    async def get(self, login_id: str, *, owner: str) -> FakeLogin:
        if self.error is not None:
            raise self.error
        if login_id not in self.logins or self.owners.get(login_id) != owner:
            raise LoginNotFound("login not found")
        return self.logins[login_id]
