"""In-process fakes of the OAuth client and the grant sink for the login and web unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from broker.errors import InvalidGrant
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import ServerMetadata
from broker.oauth.types import TokenSet
from broker.tokens.model import Grant, GrantStatus
from tests.clock import FakeClock

ISSUER = "https://as.example.org"
BASE_URL = "https://broker.example.org"
REDIRECT_URI = f"{BASE_URL}/callback"


def metadata(*, iss_supported: bool = True, par: bool = True) -> ServerMetadata:
    return ServerMetadata(
        issuer=ISSUER,
        authorization_endpoint=f"{ISSUER}/auth",
        token_endpoint=f"{ISSUER}/token",
        jwks_uri=f"{ISSUER}/jwks",
        pushed_authorization_request_endpoint=f"{ISSUER}/par" if par else None,
        authorization_response_iss_parameter_supported=iss_supported,
    )


def client_config(client_id: str, **overrides: object) -> ClientConfig:
    return ClientConfig(issuer=ISSUER, client_id=client_id, redirect_uri=REDIRECT_URI, **overrides)  # type: ignore[arg-type]


@dataclass
class ExchangeCall:
    code: str
    code_verifier: str | None
    nonce: str | None
    gate_held: bool


@dataclass
class FakeClient:
    """Records what the login flow asks of the OAuth client."""

    md: ServerMetadata = field(default_factory=metadata)
    invalid_grant_times: int = 0
    exchange_error: Exception | None = None
    metadata_error: Exception | None = None
    calls: list[ExchangeCall] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)
    par_expires_in: int = 60
    gate_depth: int = 0

    async def metadata(self) -> ServerMetadata:
        if self.metadata_error is not None:
            raise self.metadata_error
        return self.md

    def exchange_gate(self) -> AbstractAsyncContextManager[None]:
        return self._gate()

    @asynccontextmanager
    async def _gate(self) -> AsyncIterator[None]:
        self.gate_depth += 1
        try:
            yield
        finally:
            self.gate_depth -= 1

    async def exchange_code(
        self, code: str, *, code_verifier: str | None, nonce: str | None
    ) -> TokenSet:
        self.calls.append(ExchangeCall(code, code_verifier, nonce, self.gate_depth > 0))
        if self.invalid_grant_times > 0:
            self.invalid_grant_times -= 1
            raise InvalidGrant(status_code=400)
        if self.exchange_error is not None:
            raise self.exchange_error
        return TokenSet(
            access_token="at-" + code,
            token_type="Bearer",
            expires_at=2_000_000_000.0,
            received_at=1_800_000_000.0,
            scope="openid learcredential",
            refresh_token="rt-" + code,
            id_claims={"sub": "did:key:user", "iss": ISSUER},
        )

    async def push_authorization_request(self, request_object: str) -> tuple[str, int]:
        self.pushed.append(request_object)
        return f"urn:ietf:params:oauth:request_uri:par-{len(self.pushed)}", self.par_expires_in


@dataclass
class FakeSink:
    grants: list[tuple[TokenSet, str, str, str]] = field(default_factory=list)
    clock: FakeClock = field(default_factory=FakeClock)

    async def add_grant(
        self, tokens: TokenSet, *, label: str, issuer: str, client_id: str
    ) -> Grant:
        self.grants.append((tokens, label, issuer, client_id))
        now = self.clock.now()
        return Grant(
            grant_id=f"grant-{len(self.grants)}",
            label=label,
            issuer=issuer,
            client_id=client_id,
            subject=tokens.subject or "",
            scope=tokens.scope,
            status=GrantStatus.ACTIVE,
            access_token=tokens.access_token,
            access_expires_at=tokens.expires_at,
            refresh_token=tokens.refresh_token,
            created_at=now,
            updated_at=now,
        )
