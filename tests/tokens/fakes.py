"""Test doubles for the token core: a GrantStore with an operation log and fault injection, and a
Refresher that counts calls and can be gated, delayed (by an event, never by time) or failed."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from broker.errors import BrokerError, GrantExists, GrantNotFound, VersionConflict
from broker.oauth.types import TokenSet
from broker.tokens.model import Grant, GrantStatus
from tests.clock import FakeClock


class FakeGrantStore:
    """Implements broker.tokens.stores.base.GrantStore in memory. ``log`` records every mutating
    call (and lock take/release) in order; ``gets`` counts reads; ``fail[op]`` raises once."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.grants: dict[str, Grant] = {}
        self.log: list[tuple[str, ...]] = []
        self.gets = 0
        self.lists = 0
        self.fail: dict[str, BrokerError] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _maybe_fail(self, op: str) -> None:
        error = self.fail.pop(op, None)
        if error is not None:
            raise error

    def _current(self, grant_id: str) -> Grant:
        try:
            return self.grants[grant_id]
        except KeyError:
            raise GrantNotFound(f"grant {grant_id} not found") from None

    async def create(self, grant: Grant) -> None:
        self._maybe_fail("create")
        if grant.grant_id in self.grants:
            raise GrantExists(f"grant {grant.grant_id} exists")
        self.grants[grant.grant_id] = grant
        self.log.append(("create", grant.grant_id))

    async def get(self, grant_id: str) -> Grant:
        self._maybe_fail("get")
        self.gets += 1
        return self._current(grant_id)

    async def list(self, *, label: str | None = None) -> list[Grant]:
        self._maybe_fail("list")
        self.lists += 1
        return [g for g in self.grants.values() if label is None or g.label == label]

    async def mark_refresh_started(self, grant_id: str, at: float) -> None:
        self._maybe_fail("mark_refresh_started")
        grant = self._current(grant_id)
        self.grants[grant_id] = dataclasses.replace(grant, refresh_started_at=at)
        self.log.append(("mark_refresh_started", grant_id))

    async def rotate(self, grant_id: str, tokens: TokenSet, *, expected_version: int) -> Grant:
        self._maybe_fail("rotate")
        grant = self._current(grant_id)
        if grant.version != expected_version:
            raise VersionConflict(f"grant {grant_id} at version {grant.version}")
        new = dataclasses.replace(
            grant,
            access_token=tokens.access_token,
            access_expires_at=tokens.expires_at,
            refresh_token=tokens.refresh_token or grant.refresh_token,
            scope=tokens.scope or grant.scope,
            version=grant.version + 1,
            refresh_started_at=None,
            last_error=None,
            updated_at=self._clock.now(),
            access_issued_at=tokens.received_at,
            refresh_expires_at=tokens.refresh_expires_at
            if tokens.refresh_token is not None or tokens.refresh_expires_at is not None
            else grant.refresh_expires_at,
        )
        self.grants[grant_id] = new
        self.log.append(("rotate", grant_id, new.refresh_token or ""))
        return new

    async def set_status(self, grant_id: str, status: GrantStatus, *, reason: str | None) -> Grant:
        self._maybe_fail("set_status")
        grant = self._current(grant_id)
        new = dataclasses.replace(grant, status=status, last_error=reason, refresh_started_at=None)
        self.grants[grant_id] = new
        self.log.append(("set_status", grant_id, str(status), reason or ""))
        return new

    async def record_error(self, grant_id: str, reason: str) -> None:
        self._maybe_fail("record_error")
        grant = self._current(grant_id)
        self.grants[grant_id] = dataclasses.replace(grant, last_error=reason)
        self.log.append(("record_error", grant_id, reason))

    async def delete(self, grant_id: str) -> None:
        self._current(grant_id)
        del self.grants[grant_id]
        self.log.append(("delete", grant_id))

    def refresh_lock(self, grant_id: str) -> AbstractAsyncContextManager[None]:
        return self._lock(grant_id)

    @asynccontextmanager
    async def _lock(self, grant_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(grant_id, asyncio.Lock())
        async with lock:
            self.log.append(("lock", grant_id))
            try:
                yield
            finally:
                self.log.append(("unlock", grant_id))

    async def ping(self) -> None:
        self._maybe_fail("ping")

    async def close(self) -> None:
        return None

    def ops(self, grant_id: str) -> builtins.list[str]:
        return [entry[0] for entry in self.log if entry[1] == grant_id]


class FakeRefresher:
    """Counts calls; each call returns new tokens (``at-N``/``rt-N``) valid for ``lifetime``.

    ``gate``: when set to an Event, calls wait for it (``entered`` is set once one is waiting).
    ``errors``: raised in order by the next calls. ``rotate``: False -> no new refresh token.
    ``used``: every refresh token presented, in order.
    """

    def __init__(self, clock: FakeClock, *, lifetime: float = 3600.0) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.used: list[str] = []
        self.subjects: list[str] = []
        self.errors: list[BaseException] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.rotate = True
        self.on_call: list[str] = []

    async def refresh(self, refresh_token: str, *, subject: str) -> TokenSet:
        self.calls += 1
        n = self.calls
        self.used.append(refresh_token)
        self.subjects.append(subject)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        now = self._clock.now()
        return TokenSet(
            access_token=f"at-{n}",
            token_type="Bearer",
            expires_at=now + self.lifetime,
            received_at=now,
            scope="openid learcredential",
            refresh_token=f"rt-{n}" if self.rotate else None,
            id_claims={"sub": subject},
        )


def token_set(
    clock: FakeClock, *, lifetime: float = 3600.0, sub: str = "did:key:zUser"
) -> TokenSet:
    now = clock.now()
    return TokenSet(
        access_token="at-0",
        token_type="Bearer",
        expires_at=now + lifetime,
        received_at=now,
        scope="openid learcredential",
        refresh_token="rt-0",
        id_claims={"sub": sub},
    )
